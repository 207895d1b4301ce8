//! Registry URL parsing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Instance, DEFAULT_WEIGHT};

/// Default lease TTL of the etcd backend.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// One entry of a `static://` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StaticEntry {
    pub addr: String,
    pub weight: u32,
    pub meta: BTreeMap<String, String>,
}

impl StaticEntry {
    pub(crate) fn instance(&self, service: &str) -> Instance {
        Instance {
            service: service.to_owned(),
            addr: self.addr.clone(),
            weight: self.weight,
            meta: self.meta.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) enum Parsed {
    /// Parsed (and so checked) even without the `etcd` feature, which then refuses it.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Etcd {
        endpoints: Vec<String>,
        ttl: Option<Duration>,
    },
    File(PathBuf),
    Static(Vec<StaticEntry>),
}

pub(crate) fn default_dir() -> PathBuf {
    std::env::temp_dir().join("dubbo-mesh-registry")
}

pub(crate) fn parse(url: Option<&str>) -> Result<Parsed, Error> {
    let url = match url.map(str::trim) {
        None | Some("") => return Ok(Parsed::File(default_dir())),
        Some(u) => u,
    };
    let bad = |m: String| Error::InvalidUrl(format!("{url:?}: {m}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected etcd://, file:// or static://".into()))?;
    match scheme.to_ascii_lowercase().as_str() {
        "etcd" => {
            let (hosts, query) = match rest.split_once('?') {
                Some((h, q)) => (h, Some(q)),
                None => (rest, None),
            };
            let hosts = hosts.trim_end_matches('/');
            let mut endpoints = Vec::new();
            for h in hosts.split(',').map(str::trim) {
                if h.is_empty() {
                    return Err(bad("empty etcd endpoint".into()));
                }
                validate_addr(h).map_err(bad)?;
                endpoints.push(format!("http://{h}"));
            }
            let mut ttl = None;
            for (k, v) in query_pairs(query.unwrap_or("")).map_err(bad)? {
                match k.as_str() {
                    "ttl" => {
                        let n: u64 = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            bad(format!("ttl must be whole seconds >= 1, got {v:?}"))
                        })?;
                        ttl = Some(Duration::from_secs(n));
                    }
                    other => return Err(bad(format!("unknown etcd parameter {other:?}"))),
                }
            }
            Ok(Parsed::Etcd { endpoints, ttl })
        }
        "file" => {
            if rest.is_empty() {
                return Ok(Parsed::File(default_dir()));
            }
            if !rest.starts_with('/') {
                return Err(bad(
                    "file URL needs an absolute path: file:///some/dir".into()
                ));
            }
            Ok(Parsed::File(PathBuf::from(rest)))
        }
        "static" => {
            let mut list = Vec::new();
            for item in rest.split(',').map(str::trim) {
                if item.is_empty() {
                    return Err(bad("empty entry in static list".into()));
                }
                let (addr, query) = match item.split_once('?') {
                    Some((a, q)) => (a, q),
                    None => (item, ""),
                };
                validate_addr(addr).map_err(bad)?;
                let mut entry = StaticEntry {
                    addr: addr.to_owned(),
                    weight: DEFAULT_WEIGHT,
                    meta: BTreeMap::new(),
                };
                for (k, v) in query_pairs(query).map_err(bad)? {
                    if k == "weight" {
                        entry.weight = v.parse().map_err(|_| {
                            bad(format!(
                                "weight of {addr} must be an unsigned integer, got {v:?}"
                            ))
                        })?;
                    } else {
                        entry.meta.insert(k, v);
                    }
                }
                if list.iter().any(|e: &StaticEntry| e.addr == entry.addr) {
                    return Err(bad(format!("{addr} listed twice")));
                }
                list.push(entry);
            }
            Ok(Parsed::Static(list))
        }
        other => Err(bad(format!(
            "unknown scheme {other:?} (expected etcd, file or static)"
        ))),
    }
}

/// `k=v&k2=v2` (empty string: no pairs).
fn query_pairs(q: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for p in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("parameter {p:?} is not key=value"))?;
        if k.is_empty() {
            return Err(format!("parameter {p:?} has an empty key"));
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Checks `host:port` (host may be a name, IPv4, or `[IPv6]`; port 1..=65535).
pub(crate) fn validate_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let port_ok = port.parse::<u16>().map(|p| p != 0).unwrap_or(false);
    if !port_ok {
        return Err(format!("{addr:?}: port must be 1..65535"));
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .map(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
            .unwrap_or(false)
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    };
    if !host_ok {
        return Err(format!("{addr:?}: bad host"));
    }
    Ok(())
}
