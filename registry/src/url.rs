//! Registry URL parsing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Instance, DEFAULT_WEIGHT};

/// Default lease TTL of the etcd backend.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Default root of the ZooKeeper backend's tree (Dubbo's own default, its `group`).
pub const DEFAULT_ZOOKEEPER_ROOT: &str = "/dubbo";

/// Session timeout the ZooKeeper backend asks for unless the URL says
/// `?session_timeout_ms=N`; the server bounds it by its own minimum and maximum (by
/// default 2 and 20 times its `tickTime`).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// ZooKeeper's client port, for a `zookeeper://` host given without one.
const ZOOKEEPER_PORT: u16 = 2181;

/// Bounds of `?session_timeout_ms=N`.
const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

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
    /// Parsed (and so checked) even without the `zookeeper` feature, which then refuses it.
    #[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
    ZooKeeper {
        /// `host:port` of each server, in the URL's order.
        servers: Vec<String>,
        /// Root of the tree (`/dubbo` by default), without a trailing `/`.
        root: String,
        session_timeout: Duration,
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
        .ok_or_else(|| bad("expected etcd://, zookeeper://, file:// or static://".into()))?;
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
        "zookeeper" => parse_zookeeper(rest).map_err(bad),
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
            "unknown scheme {other:?} (expected etcd, zookeeper, file or static)"
        ))),
    }
}

/// `h1:2181,h2:2181[/root][?session_timeout_ms=N&backup=h3:2181,h4:2181]`, the part of a
/// `zookeeper://` URL after the scheme.
fn parse_zookeeper(rest: &str) -> Result<Parsed, String> {
    let (hosts_path, query) = match rest.split_once('?') {
        Some((h, q)) => (h, q),
        None => (rest, ""),
    };
    let (hosts, root) = match hosts_path.find('/') {
        Some(i) => (&hosts_path[..i], &hosts_path[i..]),
        None => (hosts_path, ""),
    };
    let mut servers = Vec::new();
    let mut add_hosts = |list: &str| -> Result<(), String> {
        for h in list.split(',').map(str::trim) {
            if h.is_empty() {
                return Err("empty ZooKeeper server in the list".into());
            }
            // ZooKeeper's own connect strings allow a host without a port: 2181.
            let with_port = if h.ends_with(']') || !h.contains(':') {
                format!("{h}:{ZOOKEEPER_PORT}")
            } else {
                h.to_owned()
            };
            validate_addr(&with_port)?;
            if !servers.contains(&with_port) {
                servers.push(with_port);
            }
        }
        Ok(())
    };
    add_hosts(hosts)?;
    let mut session_timeout = DEFAULT_SESSION_TIMEOUT;
    for (k, v) in query_pairs(query)? {
        match k.as_str() {
            "session_timeout_ms" => {
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|ms| SESSION_TIMEOUT_MS.contains(ms))
                    .ok_or_else(|| {
                        format!(
                            "session_timeout_ms must be whole milliseconds in {}..={}, got {v:?}",
                            SESSION_TIMEOUT_MS.start(),
                            SESSION_TIMEOUT_MS.end()
                        )
                    })?;
                session_timeout = Duration::from_millis(ms);
            }
            // Dubbo's spelling of more servers: zookeeper://h1:2181?backup=h2:2181,h3:2181
            "backup" => add_hosts(&v)?,
            other => return Err(format!("unknown zookeeper parameter {other:?}")),
        }
    }
    let root = validate_zookeeper_root(root)?;
    Ok(Parsed::ZooKeeper {
        servers,
        root,
        session_timeout,
    })
}

/// The root path of a `zookeeper://` URL: empty or `/` is the default `/dubbo`; otherwise
/// an absolute ZooKeeper path with no empty, `.` or `..` segment and no character
/// ZooKeeper refuses. A trailing `/` is dropped.
fn validate_zookeeper_root(root: &str) -> Result<String, String> {
    let trimmed = root.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(DEFAULT_ZOOKEEPER_ROOT.to_owned());
    }
    if !trimmed.starts_with('/') {
        return Err(format!("root {root:?} must start with '/'"));
    }
    for seg in trimmed[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("root {root:?} has an empty, '.' or '..' segment"));
        }
        if let Some(c) = seg.chars().find(|c| !is_zookeeper_path_char(*c)) {
            return Err(format!(
                "root {root:?} has a character ZooKeeper refuses: {c:?}"
            ));
        }
    }
    Ok(trimmed.to_owned())
}

/// Whether ZooKeeper accepts `c` in a node name (its `PathUtils.validatePath`).
pub(crate) fn is_zookeeper_path_char(c: char) -> bool {
    !matches!(u32::from(c), 0x00..=0x1f | 0x7f..=0x9f | 0xd800..=0xf8ff | 0xfff0..=0xffff)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn zk(url: &str) -> Result<(Vec<String>, String, Duration), String> {
        match parse(Some(url)) {
            Ok(Parsed::ZooKeeper {
                servers,
                root,
                session_timeout,
            }) => Ok((servers, root, session_timeout)),
            Ok(other) => panic!("{url}: not zookeeper: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn zookeeper_urls() {
        let (s, r, t) = zk("zookeeper://h1:2181,h2:2182,10.0.0.3:2183").unwrap();
        assert_eq!(s, ["h1:2181", "h2:2182", "10.0.0.3:2183"]);
        assert_eq!(r, "/dubbo");
        assert_eq!(t, DEFAULT_SESSION_TIMEOUT);
        let (s, r, t) =
            zk("zookeeper://127.0.0.1:2181/mesh/dubbo?session_timeout_ms=2000").unwrap();
        assert_eq!(
            (s, r.as_str(), t),
            (
                vec!["127.0.0.1:2181".to_owned()],
                "/mesh/dubbo",
                Duration::from_secs(2)
            )
        );
        assert_eq!(zk("zookeeper://h1:2181/").unwrap().1, "/dubbo");
        assert_eq!(zk("ZooKeeper://h1:2181/x/").unwrap().1, "/x");
        let (s, ..) = zk("zookeeper://h1?backup=h2:2182,[::1]:2183,[::1]").unwrap();
        assert_eq!(s, ["h1:2181", "h2:2182", "[::1]:2183", "[::1]:2181"]);
    }

    #[test]
    fn bad_zookeeper_urls() {
        for (url, says) in [
            ("zookeeper://", "empty ZooKeeper server"),
            ("zookeeper://h1:2181,,h2:2181", "empty ZooKeeper server"),
            ("zookeeper://h1:0", "port"),
            ("zookeeper://h1:70000", "port"),
            ("zookeeper://h1:x", "port"),
            ("zookeeper://:2181", "bad host"),
            ("zookeeper://h 1:2181", "bad host"),
            ("zookeeper://h1:2181/a//b", "empty"),
            ("zookeeper://h1:2181/a/../b", "'..'"),
            ("zookeeper://h1:2181/a/\u{1}", "refuses"),
            (
                "zookeeper://h1:2181?session_timeout_ms=0",
                "session_timeout_ms",
            ),
            (
                "zookeeper://h1:2181?session_timeout_ms=x",
                "session_timeout_ms",
            ),
            ("zookeeper://h1:2181?ttl=3", "unknown zookeeper parameter"),
            ("zookeeper://h1:2181?session_timeout_ms", "not key=value"),
        ] {
            let e = zk(url).expect_err(url);
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
