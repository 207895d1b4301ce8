//! Dubbo's registry URLs, as Apache Dubbo writes them into ZooKeeper.
//!
//! A provider is the node `<root>/<interface>/providers/<name>` where `name` is
//! `URL.encode(url.toFullString())`: the whole provider URL
//! (`dubbo://10.0.0.5:20880/com.foo.Hello?anyhost=true&interface=com.foo.Hello&...`,
//! parameters sorted by name) encoded with `java.net.URLEncoder`'s rules. Parameter
//! values are percent-encoded first where they would break the URL (`&`, `=`, `%`, ...),
//! so that a value cannot smuggle in another parameter.
//!
//! Decoding is strict about what it trusts (the node name comes from anyone who can
//! write to ZooKeeper) and returns why an entry was skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::url::validate_addr;
use crate::{Instance, DEFAULT_WEIGHT};

/// Longest node name decoded; longer ones are skipped unread.
pub(crate) const MAX_NAME: usize = 16 * 1024;
/// Most parameters in one URL.
pub(crate) const MAX_PARAMS: usize = 64;
/// Longest parameter name, in bytes.
pub(crate) const MAX_KEY: usize = 64;
/// Longest parameter value, in bytes.
pub(crate) const MAX_VALUE: usize = 4 * 1024;
/// Weights above this are taken as this.
pub(crate) const MAX_WEIGHT: u32 = 1_000_000;

/// Meta key of the provider-agent's Dubbo listener (`host:port`): the `dubbo://` address
/// a plain Dubbo consumer calls, while meshed consumers call the agent (`mesh.agent`).
pub(crate) const DUBBO_ADDR: &str = "dubbo.addr";
/// Parameter naming the mesh agent in front of a `dubbo://` provider.
pub(crate) const MESH_AGENT: &str = "mesh.agent";
/// Meta key set by the decoder: `agent` (reach it through its mesh agent) or `dubbo`
/// (a plain Dubbo provider).
pub(crate) const PROTOCOL: &str = "protocol";

/// Parameters the provider URL sets itself; meta keys of these names are not copied.
const RESERVED: &[&str] = &[
    "anyhost",
    "interface",
    "side",
    "timestamp",
    MESH_AGENT,
    "weight",
    DUBBO_ADDR,
    PROTOCOL,
];

/// `java.net.URLEncoder.encode(s, "UTF-8")`: `A-Z a-z 0-9 . - * _` stay, space becomes
/// `+`, every other byte of the UTF-8 encoding becomes `%XX` (upper-case hex).
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// `java.net.URLDecoder.decode(s, "UTF-8")`, strictly: `+` is a space, `%XX` a byte; a
/// `%` without two hex digits after it, or bytes that are not UTF-8, are an error.
pub(crate) fn form_decode(s: &str) -> Result<String, &'static str> {
    decode(s, true)
}

/// Percent-decoding of a parameter name or value (`+` stays a `+`).
fn percent_decode(s: &str) -> Result<String, &'static str> {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> Result<String, &'static str> {
    if !s.contains(['%', '+']) {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).and_then(|c| char::from(*c).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err("bad %-escape"),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded")
}

/// Percent-encodes what would break a URL's parameter (or is not printable ASCII) in a
/// parameter name or value; the rest (`,` `:` `/` `.` ...) stays as Dubbo writes it.
fn encode_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let keep = b.is_ascii_graphic()
            && !matches!(
                b,
                b'%' | b'&'
                    | b'='
                    | b'?'
                    | b'#'
                    | b'"'
                    | b'<'
                    | b'>'
                    | b'\\'
                    | b'^'
                    | b'`'
                    | b'{'
                    | b'|'
                    | b'}'
            );
        if keep {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `protocol://host/path?k=v&...` with the parameters sorted by name, as Dubbo's
/// `URL.toFullString()` writes them.
fn full_string(
    protocol: &str,
    host: &str,
    path: &str,
    params: &BTreeMap<String, String>,
) -> String {
    let mut s = format!("{protocol}://{host}/{path}");
    for (i, (k, v)) in params.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(&encode_param(k));
        s.push('=');
        s.push_str(&encode_param(v));
    }
    s
}

/// The provider URL of `instance` (its `service` is the interface), registered at
/// `timestamp_ms`: `dubbo://<dubbo.addr>/...&mesh.agent=<addr>` when its meta has a
/// `dubbo.addr`, a plain `dubbo://<addr>/...` when its meta says `protocol=dubbo`, else
/// `dubbomesh://<addr>/...`. Every meta entry but `dubbo.addr` (and
/// the parameters the URL sets itself) becomes a parameter.
///
/// # Errors
/// A bad `dubbo.addr`, or meta the decoder would refuse (too many entries, a name over
/// [`MAX_KEY`] bytes or empty, a value over [`MAX_VALUE`] bytes, a control character),
/// or a URL whose node name would be over [`MAX_NAME`] bytes.
pub(crate) fn provider_url(instance: &Instance, timestamp_ms: u64) -> Result<String, String> {
    let service = &instance.service;
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &instance.meta {
        if RESERVED.contains(&k.as_str()) {
            continue;
        }
        if k.is_empty() || k.len() > MAX_KEY || k.chars().any(char::is_control) {
            return Err(format!(
                "meta key {k:?} must be 1..={MAX_KEY} bytes without control characters"
            ));
        }
        if v.len() > MAX_VALUE || v.chars().any(char::is_control) {
            return Err(format!(
                "meta value of {k:?} must be at most {MAX_VALUE} bytes without control characters"
            ));
        }
        params.insert(k.clone(), v.clone());
    }
    params.insert("anyhost".into(), "true".into());
    params.insert("interface".into(), service.clone());
    params.insert("side".into(), "provider".into());
    params.insert("timestamp".into(), timestamp_ms.to_string());
    params.insert("weight".into(), instance.weight.to_string());
    // Meta `protocol=dubbo` stands for an unmeshed provider (what the decoder makes of a
    // plain `dubbo://` node): written as one, e.g. by a bench or test standing in for it.
    let unmeshed = instance.meta.get(PROTOCOL).is_some_and(|p| p == "dubbo");
    let (protocol, host) = match instance.meta.get(DUBBO_ADDR) {
        Some(dubbo) => {
            validate_addr(dubbo).map_err(|e| format!("meta {DUBBO_ADDR}: {e}"))?;
            params.insert(MESH_AGENT.into(), instance.addr.clone());
            ("dubbo", dubbo.as_str())
        }
        None if unmeshed => ("dubbo", instance.addr.as_str()),
        None => ("dubbomesh", instance.addr.as_str()),
    };
    if params.len() > MAX_PARAMS {
        return Err(format!(
            "{} URL parameters (meta entries and the URL's own), at most {MAX_PARAMS}",
            params.len()
        ));
    }
    let url = full_string(protocol, host, service, &params);
    if form_encode(&url).len() > MAX_NAME {
        return Err(format!(
            "the provider URL would be over {MAX_NAME} bytes once encoded"
        ));
    }
    Ok(url)
}

/// The consumer URL a watch of `service` registers (Dubbo's `consumers` category).
pub(crate) fn consumer_url(local_host: &str, service: &str, timestamp_ms: u64, pid: u32) -> String {
    let params: BTreeMap<String, String> = [
        ("application", "dubbo-mesh".to_owned()),
        ("category", "consumers".to_owned()),
        ("check", "false".to_owned()),
        ("interface", service.to_owned()),
        ("pid", pid.to_string()),
        ("side", "consumer".to_owned()),
        ("timestamp", timestamp_ms.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    full_string("consumer", local_host, service, &params)
}

/// What [`decode_provider`] makes of a node name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A provider, with the `timestamp` it was registered at (0 if none), to keep the
    /// newest of two nodes for one address.
    Provider(Instance, u64),
    /// A well-formed provider that says it is off (`enabled=false` or `disabled=true`).
    Disabled,
}

/// Decodes the provider node `name` found under `<root>/<service>/providers`.
///
/// # Errors
/// Why the entry is skipped: a name over [`MAX_NAME`] bytes, bad encoding, a protocol
/// other than `dubbo` and `dubbomesh`, a missing host, a port that is missing, 0 or over
/// 65535, an interface other than `service`, a bad `mesh.agent` or `weight`, or
/// parameters beyond the bounds ([`MAX_PARAMS`], [`MAX_KEY`], [`MAX_VALUE`], empty or
/// control characters in a name, control characters in a value).
pub(crate) fn decode_provider(name: &str, service: &str) -> Result<Decoded, String> {
    if name.len() > MAX_NAME {
        return Err(format!(
            "node name of {} bytes (at most {MAX_NAME})",
            name.len()
        ));
    }
    let url = form_decode(name).map_err(|e| format!("node name: {e}"))?;
    let (protocol, rest) = url.split_once("://").ok_or("not a URL (no protocol://)")?;
    let (addr_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let (authority, path) = match addr_path.split_once('/') {
        Some((a, p)) => (a, p),
        None => (addr_path, ""),
    };
    // Dubbo URLs may carry `user:password@`: not ours to use.
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = split_host_port(hostport)?;
    let params = parse_params(query)?;
    if params.get("enabled").is_some_and(|v| v == "false")
        || params.get("disabled").is_some_and(|v| v == "true")
    {
        return Ok(Decoded::Disabled);
    }
    let interface = params.get("interface").map_or(path, String::as_str);
    if interface != service {
        return Err(format!(
            "interface {interface:?} is not the watched {service:?}"
        ));
    }
    let hostport = format!("{host}:{port}");
    let mut meta = params;
    let weight = match meta.remove("weight") {
        None => DEFAULT_WEIGHT,
        Some(w) => w
            .parse::<u64>()
            .map_err(|_| format!("weight {w:?} is not a whole number"))?
            .min(u64::from(MAX_WEIGHT)) as u32,
    };
    let timestamp = meta
        .get("timestamp")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(0);
    let addr = match protocol {
        "dubbo" => match meta.get(MESH_AGENT) {
            Some(agent) => {
                validate_addr(agent).map_err(|e| format!("{MESH_AGENT}: {e}"))?;
                let agent = agent.clone();
                meta.insert(PROTOCOL.into(), "agent".into());
                meta.insert(DUBBO_ADDR.into(), hostport);
                agent
            }
            None => {
                meta.insert(PROTOCOL.into(), "dubbo".into());
                hostport
            }
        },
        "dubbomesh" => {
            meta.insert(PROTOCOL.into(), "agent".into());
            hostport
        }
        other => return Err(format!("protocol {other:?} (only dubbo and dubbomesh)")),
    };
    Ok(Decoded::Provider(
        Instance {
            service: service.to_owned(),
            addr,
            weight,
            meta,
        },
        timestamp,
    ))
}

/// `host:port` of a URL: the host a name, an IPv4 or a `[IPv6]`, the port 1..=65535.
fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(i) => (&s[..=i], s[i + 1..].strip_prefix(':')),
            None => return Err(format!("bad host in {s:?}")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("no host in {s:?}"));
    }
    let port = port.ok_or_else(|| format!("no port in {s:?}"))?;
    let port = match port.parse::<u32>() {
        Ok(p @ 1..=65535) => p as u16,
        _ => return Err(format!("port {port:?} is not 1..65535")),
    };
    validate_addr(&format!("{host}:{port}"))?;
    Ok((host, port))
}

/// `k=v&k2=v2` (empty segments ignored; `k` alone is `k=k`, as Dubbo reads it), names
/// and values percent-decoded; the last of repeated names wins.
fn parse_params(query: &str) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, part));
        let k = percent_decode(k).map_err(|e| format!("parameter name {k:?}: {e}"))?;
        if k.is_empty()
            || k.len() > MAX_KEY
            || k.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "parameter name {k:?} is empty, over {MAX_KEY} bytes or has spaces or control characters"
            ));
        }
        let v = percent_decode(v).map_err(|e| format!("value of {k:?}: {e}"))?;
        if v.len() > MAX_VALUE || v.chars().any(char::is_control) {
            return Err(format!(
                "value of {k:?} is over {MAX_VALUE} bytes or has control characters"
            ));
        }
        params.insert(k, v);
        if params.len() > MAX_PARAMS {
            return Err(format!("more than {MAX_PARAMS} parameters"));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "com.foo.Hello";

    fn provider(name: &str) -> Instance {
        match decode_provider(name, SVC) {
            Ok(Decoded::Provider(i, _)) => i,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn skipped(name: &str) -> String {
        match decode_provider(name, SVC) {
            Err(e) => e,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn form_encoding_is_java_url_encoder() {
        assert_eq!(
            form_encode("dubbo://1.2.3.4:20880/a.B?x=1&y=a,b c*_-~é"),
            "dubbo%3A%2F%2F1.2.3.4%3A20880%2Fa.B%3Fx%3D1%26y%3Da%2Cb+c*_-%7E%C3%A9"
        );
        assert_eq!(form_decode("a+b%2C%C3%A9").unwrap(), "a b,é");
        assert_eq!(form_decode("plain").unwrap(), "plain");
        for bad in ["%", "%4", "%zz", "a%g0", "%C3"] {
            assert!(form_decode(bad).is_err(), "{bad}");
        }
        let s = "dubbo://[::1]:1/x?a=%26&b=+";
        assert_eq!(form_decode(&form_encode(s)).unwrap(), s);
    }

    #[test]
    fn meshed_provider_round_trip() {
        let inst = Instance::new(SVC, "10.0.0.7:30000")
            .with_weight(250)
            .with_meta("dubbo.addr", "10.0.0.7:20880")
            .with_meta("version", "1.0.0")
            .with_meta("group", "g&1")
            .with_meta("methods", "hello,bye");
        let url = provider_url(&inst, 1700000000123).unwrap();
        assert_eq!(
            url,
            "dubbo://10.0.0.7:20880/com.foo.Hello?anyhost=true&group=g%261&interface=com.foo.Hello\
             &mesh.agent=10.0.0.7:30000&methods=hello,bye&side=provider&timestamp=1700000000123\
             &version=1.0.0&weight=250"
        );
        let name = form_encode(&url);
        assert!(name.starts_with(
            "dubbo%3A%2F%2F10.0.0.7%3A20880%2Fcom.foo.Hello%3Fanyhost%3Dtrue%26group%3Dg%25261%26"
        ));
        let Ok(Decoded::Provider(got, ts)) = decode_provider(&name, SVC) else {
            panic!("decodes");
        };
        assert_eq!(ts, 1700000000123);
        assert_eq!(got.addr, "10.0.0.7:30000");
        assert_eq!(got.weight, 250);
        let m = |k: &str| got.meta.get(k).map(String::as_str);
        assert_eq!(m("protocol"), Some("agent"));
        assert_eq!(m("dubbo.addr"), Some("10.0.0.7:20880"));
        assert_eq!(m("version"), Some("1.0.0"));
        assert_eq!(m("group"), Some("g&1"));
        assert_eq!(m("methods"), Some("hello,bye"));
        assert_eq!(m("weight"), None);
    }

    #[test]
    fn agent_only_provider_round_trip() {
        let inst = Instance::new(SVC, "127.0.0.1:30001").with_meta("serialization", "hessian2");
        let url = provider_url(&inst, 5).unwrap();
        assert_eq!(
            url,
            "dubbomesh://127.0.0.1:30001/com.foo.Hello?anyhost=true&interface=com.foo.Hello\
             &serialization=hessian2&side=provider&timestamp=5&weight=100"
        );
        let got = provider(&form_encode(&url));
        assert_eq!(got.addr, "127.0.0.1:30001");
        assert_eq!(got.weight, DEFAULT_WEIGHT);
        assert_eq!(got.meta.get("protocol").map(String::as_str), Some("agent"));
        assert_eq!(
            got.meta.get("serialization").map(String::as_str),
            Some("hessian2")
        );
    }

    #[test]
    fn plain_dubbo_provider_as_java_writes_it() {
        let name = "dubbo%3A%2F%2F192.168.1.9%3A20880%2Fcom.foo.Hello%3Fanyhost%3Dtrue%26application%3Ddemo-provider\
                    %26deprecated%3Dfalse%26dubbo%3D2.0.2%26dynamic%3Dtrue%26generic%3Dfalse%26interface%3Dcom.foo.Hello\
                    %26methods%3DsayHello%2CsayHelloAsync%26pid%3D4242%26release%3D2.7.23%26side%3Dprovider%26timestamp%3D1690000000000";
        let got = provider(name);
        assert_eq!(got.addr, "192.168.1.9:20880");
        assert_eq!(got.weight, DEFAULT_WEIGHT);
        assert_eq!(got.meta.get("protocol").map(String::as_str), Some("dubbo"));
        assert_eq!(
            got.meta.get("application").map(String::as_str),
            Some("demo-provider")
        );
        assert_eq!(
            got.meta.get("methods").map(String::as_str),
            Some("sayHello,sayHelloAsync")
        );
        assert_eq!(got.meta.get("dubbo.addr"), None);
    }

    #[test]
    fn weights() {
        let url = |w: &str| form_encode(&format!("dubbo://h:1/com.foo.Hello?weight={w}"));
        assert_eq!(provider(&url("0")).weight, 0);
        assert_eq!(provider(&url("7")).weight, 7);
        assert_eq!(provider(&url("99999999999")).weight, MAX_WEIGHT);
        for bad in ["-1", "x", "", "1.5", "99999999999999999999999"] {
            assert!(skipped(&url(bad)).contains("weight"), "{bad}");
        }
    }

    #[test]
    fn disabled_providers() {
        for q in ["enabled=false", "disabled=true"] {
            let name = form_encode(&format!("dubbo://h:1/com.foo.Hello?{q}"));
            assert_eq!(decode_provider(&name, SVC), Ok(Decoded::Disabled));
        }
        let name = form_encode("dubbo://h:1/com.foo.Hello?enabled=true&disabled=false");
        provider(&name);
    }

    #[test]
    fn hostile_names_are_skipped_with_a_reason() {
        let enc = |s: &str| form_encode(s);
        for (name, says) in [
            (
                "dubbo%3A%2F%2Fh%3A1%2Fcom.foo.Hello%ZZ".to_owned(),
                "%-escape",
            ),
            ("dubbo%3A%2F%2Fh%3A1%2Fcom.foo.Hello%C3".to_owned(), "UTF-8"),
            (enc("rest://h:1/com.foo.Hello"), "protocol"),
            (enc("h:1/com.foo.Hello"), "no protocol"),
            (enc("dubbo://h:0/com.foo.Hello"), "port"),
            (enc("dubbo://h:70000/com.foo.Hello"), "port"),
            (enc("dubbo://h/com.foo.Hello"), "no port"),
            (enc("dubbo://:20880/com.foo.Hello"), "no host"),
            (enc("dubbo://[]:20880/com.foo.Hello"), "no host"),
            (enc("dubbo://h%20x:20880/com.foo.Hello"), "bad host"),
            (enc("dubbo://h:1/com.foo.Other"), "interface"),
            (
                enc("dubbo://h:1/com.foo.Hello?interface=com.foo.Other"),
                "interface",
            ),
            (
                enc("dubbo://h:1/com.foo.Hello?mesh.agent=nope"),
                "mesh.agent",
            ),
            (enc("dubbo://h:1/com.foo.Hello?=x"), "parameter name"),
            (enc("dubbo://h:1/com.foo.Hello?a%zz=1"), "parameter name"),
            (enc("dubbo://h:1/com.foo.Hello?a=%zz"), "value"),
            (enc("dubbo://h:1/com.foo.Hello?a=%0a"), "control"),
            (
                enc(&format!("dubbo://h:1/com.foo.Hello?{}=1", "k".repeat(65))),
                "parameter name",
            ),
            (
                enc(&format!("dubbo://h:1/com.foo.Hello?a={}", "v".repeat(4097))),
                "value",
            ),
            ("x".repeat(MAX_NAME + 1), "node name of"),
        ] {
            let e = skipped(&name);
            assert!(e.contains(says), "{name:.80}: {e}");
        }
        let many: String = (0..65).map(|i| format!("k{i}=v&")).collect();
        assert!(skipped(&enc(&format!("dubbo://h:1/com.foo.Hello?{many}"))).contains("parameters"));
    }

    #[test]
    fn lenient_where_dubbo_is() {
        let got = provider(&form_encode(
            "dubbo://u:p@h:20880/com.foo.Hello?&&flag&a=1&a=2",
        ));
        assert_eq!(got.addr, "h:20880");
        assert_eq!(got.meta.get("flag").map(String::as_str), Some("flag"));
        assert_eq!(got.meta.get("a").map(String::as_str), Some("2"));
        let got = provider(&form_encode(
            "dubbomesh://[::1]:30000/x?interface=com.foo.Hello",
        ));
        assert_eq!(got.addr, "[::1]:30000");
    }

    #[test]
    fn provider_url_refuses_what_the_decoder_would_skip() {
        let i = Instance::new(SVC, "h:1");
        assert!(provider_url(&i.clone().with_meta("dubbo.addr", "nope"), 1).is_err());
        assert!(provider_url(&i.clone().with_meta("k", "a\nb"), 1).is_err());
        assert!(provider_url(&i.clone().with_meta("k".repeat(65), "v"), 1).is_err());
        assert!(provider_url(&i.clone().with_meta("k", "v".repeat(4097)), 1).is_err());
        let mut many = i.clone();
        for n in 0..60 {
            many = many.with_meta(format!("k{n}"), "v");
        }
        assert!(provider_url(&many, 1).unwrap_err().contains("parameters"));
        // meta cannot override what the URL sets itself
        let url = provider_url(&i.with_meta("interface", "x").with_meta("weight", "1"), 1).unwrap();
        assert!(
            url.contains("interface=com.foo.Hello") && url.contains("weight=100"),
            "{url}"
        );
    }

    #[test]
    fn consumer_url_is_dubbos() {
        assert_eq!(
            consumer_url("10.1.2.3", SVC, 9, 77),
            "consumer://10.1.2.3/com.foo.Hello?application=dubbo-mesh&category=consumers\
             &check=false&interface=com.foo.Hello&pid=77&side=consumer&timestamp=9"
        );
    }

    #[test]
    fn an_unmeshed_instance_is_written_as_a_plain_dubbo_provider_and_read_back_as_one() {
        let i = Instance::new(SVC, "127.0.0.1:20880").with_meta(PROTOCOL, "dubbo");
        let url = provider_url(&i, 5).unwrap();
        assert!(
            url.starts_with("dubbo://127.0.0.1:20880/com.foo.Hello?"),
            "{url}"
        );
        assert!(
            !url.contains(MESH_AGENT) && !url.contains("protocol="),
            "{url}"
        );
        let Ok(Decoded::Provider(back, 5)) = decode_provider(&form_encode(&url), SVC) else {
            panic!("{url}")
        };
        assert_eq!(back.addr, "127.0.0.1:20880");
        assert_eq!(back.meta.get(PROTOCOL).map(String::as_str), Some("dubbo"));
    }

    #[test]
    fn sofa_rpc_nodes_without_a_path_are_read_by_their_interface_parameter() {
        // As sofa-rpc-node 2.10 writes it (tests/peers/README-zk.md): no path after the
        // port, `encodeURIComponent` of the whole URL, empty parameters.
        let service = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
        let name = "dubbo%3A%2F%2F127.0.0.1%3A58239%3FstartTime%3D1796354047870%26pid%3D20517%26uniqueId%3D%26dynamic%3Dtrue%26appName%3D%26timeout%3D3000%26serialization%3Dhessian2%26weight%3D100%26accepts%3D100000%26language%3Dnodejs%26rpcVer%3D50400%26protocol%3Ddubbo%26interface%3Dcom.alibaba.dubbo.performance.demo.provider.IHelloService%26version%3D0.0.0%26group%3D";
        let Ok(Decoded::Provider(i, _)) = decode_provider(name, service) else {
            panic!("not read")
        };
        assert_eq!((i.addr.as_str(), i.weight), ("127.0.0.1:58239", 100));
        assert_eq!(i.meta.get(PROTOCOL).map(String::as_str), Some("dubbo"));
        assert_eq!(i.variants(), vec![crate::Variant::new("0.0.0", "")]);
    }
}
