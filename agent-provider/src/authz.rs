//! Who may call what: the provider-agent's authorization policy (`--authz FILE`).
//!
//! A policy is a JSON file of rules; a call is allowed when some rule names its caller
//! (`from`), its service (`services`) and its method (`methods`). Anything else is
//! refused: FORBIDDEN to a consumer-agent, SERVICE_ERROR (70) to a Dubbo consumer.
//! Without `--authz` every peer may call every served service (no policy at all).
//!
//! ```json
//! {"rules": [
//!   {"name": "shop", "from": ["spiffe://prod.example/ns/shop/*", "dns:cart.shop.svc"],
//!    "services": ["com.example.Cart", "com.example.Price:1.0.0"], "methods": ["*"]},
//!   {"from": ["anonymous"], "services": ["com.example.Health"], "methods": ["ping"]}
//! ]}
//! ```
//!
//! # Callers (`from`)
//!
//! A connection's peer identity is what TLS proved at its handshake: the certificate's
//! URI SAN as it is (a SPIFFE ID, `spiffe://trust-domain/path`) when it has one, else
//! `dns:` and its DNS SAN. A connection without one (plaintext) is anonymous.
//!
//! | pattern | matches |
//! |---|---|
//! | `spiffe://prod.example/ns/shop/sa/cart` | that identity exactly (any URI: `scheme://...`) |
//! | `spiffe://prod.example/ns/shop/*` | every identity under that path (`/*` only at the end) |
//! | `dns:cart.shop.svc` | the identity `dns:cart.shop.svc` (DNS names compare case-insensitively) |
//! | `*` | any authenticated peer (one with an identity) |
//! | `anonymous` | a peer without an identity (plaintext) |
//!
//! # Services and methods
//!
//! `services` are in Dubbo's service-key form `[GROUP/]INTERFACE[:VERSION]`, as in
//! `--service`. A group or version left out matches any; each of the three parts may be
//! `*` (any) or end in `*` (a prefix: `com.example.*`, `1.*`); `*` alone is every
//! service. Version `0.0.0` is the same as none. The group and version matched are
//! those the provider is called with (the `--service` variant the call resolved to).
//! `methods` are method names, `*` (any) or a prefix ending in `*` (`get*`).
//!
//! # Checking a call
//!
//! Per call nothing is allocated and nothing locked: the policy is compiled once (each
//! pattern a small matcher), each connection keeps the indexes of the rules its peer
//! may use (recomputed only when the policy changes), and an agent connection keeps
//! each call id's decision until that id is defined again.
//!
//! # Reloading
//!
//! The control thread checks the file's identity (device, inode, size, modification and
//! change times) once a second ([`Watcher`]); a changed file is read and compiled, and
//! the new policy goes to every loop as a message. A file that does not parse (or is
//! gone) is logged and counted, and the previous policy stays. Replace the file
//! atomically (write another, then rename it over; Kubernetes ConfigMap mounts do):
//! a file caught half-written is refused until its next change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};

/// How often the policy file is checked for a change.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(1);

/// Largest policy file read (a policy is a few kilobytes).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// What an anonymous peer is called in refusals.
const ANONYMOUS_PEER: &str = "anonymous peer";

/// Each compiled policy's number, so a connection knows its view is stale.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A compiled policy: who may call what.
#[derive(Debug)]
pub struct Policy {
    rules: Box<[Rule]>,
    generation: u64,
}

/// One rule: any of its callers may call any of its methods of any of its services.
#[derive(Debug)]
struct Rule {
    from: Box<[Caller]>,
    services: Box<[ServicePattern]>,
    methods: Box<[Part]>,
}

/// A `from` pattern.
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    /// A peer without an identity.
    Anonymous,
    /// Any peer with one.
    Authenticated,
    /// A URI identity, exactly.
    Uri(Box<str>),
    /// URI identities under this prefix (it ends in `/`; something must follow it).
    UriPrefix(Box<str>),
    /// A DNS identity: the name after `dns:`, lowercase.
    Dns(Box<str>),
}

/// A name, or a part of one: anything, exactly this, or what starts with this.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

/// `[GROUP/]INTERFACE[:VERSION]`, each part a [`Part`].
#[derive(Debug, PartialEq, Eq)]
struct ServicePattern {
    group: Part,
    interface: Part,
    version: Part,
}

/// What a call is, for the policy: the service as the provider is called (interface,
/// and the version and group the call resolved to) and the method.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) interface: &'a str,
    pub(crate) version: &'a str,
    pub(crate) group: &'a str,
    pub(crate) method: &'a str,
}

impl Part {
    fn matches(&self, s: &str) -> bool {
        match self {
            Part::Any => true,
            Part::Exact(e) => **e == *s,
            Part::Prefix(p) => s.starts_with(&**p),
        }
    }
}

/// Version `0.0.0` is Dubbo's "no version".
fn plain_version(v: &str) -> &str {
    if v == "0.0.0" {
        ""
    } else {
        v
    }
}

impl ServicePattern {
    fn matches(&self, call: &Call<'_>) -> bool {
        self.interface.matches(call.interface)
            && self.group.matches(call.group)
            && self.version.matches(plain_version(call.version))
    }
}

impl Caller {
    fn matches(&self, peer: Option<&str>) -> bool {
        match (self, peer) {
            (Caller::Anonymous, None) => true,
            (Caller::Anonymous, Some(_)) | (_, None) => false,
            (Caller::Authenticated, Some(_)) => true,
            (Caller::Uri(u), Some(id)) => **u == *id,
            (Caller::UriPrefix(p), Some(id)) => id.len() > p.len() && id.starts_with(&**p),
            (Caller::Dns(name), Some(id)) => {
                id.get(..4).zip(id.get(4..)).is_some_and(|(scheme, rest)| {
                    scheme.eq_ignore_ascii_case("dns:") && rest.eq_ignore_ascii_case(name)
                })
            }
        }
    }
}

impl Rule {
    fn allows(&self, call: &Call<'_>) -> bool {
        self.services.iter().any(|s| s.matches(call))
            && self.methods.iter().any(|m| m.matches(call.method))
    }
}

impl Policy {
    /// Compiles a policy from its JSON text.
    ///
    /// # Errors
    /// The text is not JSON (the error names its line and column), or it does not have
    /// the policy's shape or a pattern is invalid (the error names the rule, the field
    /// and the entry).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(top) = doc else {
            return Err(format!(
                "expected an object {{\"rules\": [...]}}, found {}",
                kind(&doc)
            ));
        };
        only_fields(&top, &["rules"], "the top level")?;
        let rules = match top.get("rules") {
            Some(Value::Array(rules)) => rules,
            Some(other) => return Err(format!("\"rules\" must be an array, not {}", kind(other))),
            None => return Err("missing field \"rules\" (an array of rules)".into()),
        };
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| parse_rule(i + 1, r))
            .collect::<Result<Box<[Rule]>, String>>()?;
        if u32::try_from(rules.len()).is_err() {
            return Err("too many rules".into());
        }
        Ok(Policy {
            rules,
            generation: GENERATION.fetch_add(1, Relaxed),
        })
    }

    /// How many rules it has.
    pub fn rules(&self) -> usize {
        self.rules.len()
    }

    /// Whether `peer` (its identity; `None`: anonymous) may make `call`. Scans every
    /// rule: a connection uses [`PeerCache`] instead.
    #[cfg(test)]
    fn allows(&self, peer: Option<&str>, call: &Call<'_>) -> bool {
        self.rules
            .iter()
            .any(|r| r.from.iter().any(|c| c.matches(peer)) && r.allows(call))
    }

    /// Appends the indexes of the rules naming `peer` to `into`.
    fn rules_for(&self, peer: Option<&str>, into: &mut Vec<u32>) {
        let named = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.from.iter().any(|c| c.matches(peer)));
        into.extend(named.map(|(i, _)| i as u32));
    }

    /// Whether one of the rules at `indexes` allows `call`.
    fn any_allows(&self, indexes: &[u32], call: &Call<'_>) -> bool {
        indexes
            .iter()
            .filter_map(|&i| self.rules.get(i as usize))
            .any(|r| r.allows(call))
    }
}

/// The message of a refusal: `forbidden: <identity or "anonymous peer"> may not call
/// <service key>.<method>`.
pub(crate) fn forbidden_message(peer: Option<&str>, call: &Call<'_>) -> String {
    let key = codec::dubbo::server::service_key(call.interface, call.version, call.group);
    format!(
        "forbidden: {} may not call {key}.{}",
        peer.unwrap_or(ANONYMOUS_PEER),
        call.method
    )
}

/// A call id's decision, as an agent connection remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Decision {
    #[default]
    Unknown,
    Allow,
    Deny,
}

/// One connection's view of the policy: the rules its peer may use, and (agent
/// connections) the decision for each call id. Kept until the policy or the peer's
/// identity changes; its buffers keep their capacity, so a warm connection allocates
/// nothing.
#[derive(Debug, Default)]
pub(crate) struct PeerCache {
    /// The policy `rules` and `decisions` are for (0: none yet).
    generation: u64,
    rules: Vec<u32>,
    decisions: Vec<Decision>,
}

impl PeerCache {
    /// The peer's identity changed (a TLS handshake finished): decide again.
    pub(crate) fn invalidate(&mut self) {
        self.generation = 0;
    }

    /// Call id `id` was defined again: its decision is stale.
    pub(crate) fn forget(&mut self, id: u32) {
        if let Some(d) = self.decisions.get_mut(id as usize) {
            *d = Decision::Unknown;
        }
    }

    fn refresh(&mut self, policy: &Policy, peer: Option<&str>) {
        if self.generation != policy.generation {
            self.rules.clear();
            policy.rules_for(peer, &mut self.rules);
            self.decisions.clear();
            self.generation = policy.generation;
        }
    }

    /// Whether `peer` may make `call`; `call_id` (an agent connection's) keeps the
    /// decision for the next call naming that id.
    pub(crate) fn allows(
        &mut self,
        policy: &Policy,
        peer: Option<&str>,
        call_id: Option<u32>,
        call: &Call<'_>,
    ) -> bool {
        self.refresh(policy, peer);
        let slot = call_id.map(|i| i as usize);
        if let Some(d) = slot.and_then(|i| self.decisions.get(i)) {
            match d {
                Decision::Allow => return true,
                Decision::Deny => return false,
                Decision::Unknown => {}
            }
        }
        let allowed = policy.any_allows(&self.rules, call);
        if let Some(i) = slot.filter(|&i| i < codec::agent::MAX_CALLS) {
            if self.decisions.len() <= i {
                self.decisions.resize(i + 1, Decision::Unknown);
            }
            if let Some(d) = self.decisions.get_mut(i) {
                *d = if allowed {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
            }
        }
        allowed
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Refuses fields other than `allowed` (a misspelt field would otherwise change what
/// the policy means without a word).
fn only_fields(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{at}: unknown field {k:?} (expected {})",
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

fn parse_rule(n: usize, rule: &Value) -> Result<Rule, String> {
    let Value::Object(obj) = rule else {
        return Err(format!(
            "rule {n}: expected an object, found {}",
            kind(rule)
        ));
    };
    let mut at = format!("rule {n}");
    match obj.get("name") {
        None => {}
        Some(Value::String(name)) => {
            let _ = write!(at, " ({name:?})");
        }
        Some(other) => {
            return Err(format!(
                "{at}: \"name\" must be a string, not {}",
                kind(other)
            ))
        }
    }
    only_fields(obj, &["name", "from", "services", "methods"], &at)?;
    Ok(Rule {
        from: entries(obj, &at, "from", parse_caller)?,
        services: entries(obj, &at, "services", parse_service)?,
        methods: entries(obj, &at, "methods", parse_method)?,
    })
}

/// A rule's field: a non-empty array of strings, each compiled by `parse`.
fn entries<T>(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Box<[T]>, String> {
    let list = match obj.get(field) {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(format!(
                "{at}: \"{field}\" is empty (a rule must name at least one)"
            ))
        }
        Some(other) => {
            return Err(format!(
                "{at}: \"{field}\" must be an array of strings, not {}",
                kind(other)
            ))
        }
        None => return Err(format!("{at}: missing field \"{field}\"")),
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let entry = i + 1;
            let Value::String(s) = v else {
                return Err(format!(
                    "{at}: \"{field}\" entry {entry} must be a string, not {}",
                    kind(v)
                ));
            };
            parse(s).map_err(|e| format!("{at}: \"{field}\" entry {entry} {s:?}: {e}"))
        })
        .collect()
}

fn parse_caller(s: &str) -> Result<Caller, String> {
    const EXPECTED: &str = "expected a URI identity (spiffe://trust-domain/path), a URI prefix ending in /*, dns:NAME, * (any authenticated peer) or anonymous";
    if s == "anonymous" {
        return Ok(Caller::Anonymous);
    }
    if s == "*" {
        return Ok(Caller::Authenticated);
    }
    if let Some(name) = s.strip_prefix("dns:") {
        return check_dns_name(name).map(|()| Caller::Dns(name.to_ascii_lowercase().into()));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(EXPECTED.into());
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(format!("{scheme:?} is not a URI scheme; {EXPECTED}"));
    }
    if rest.is_empty() {
        return Err(format!("nothing after {scheme}://; {EXPECTED}"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{c:?} in a URI"));
    }
    match s.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') && !prefix.contains('*') => {
            Ok(Caller::UriPrefix(prefix.into()))
        }
        _ if s.contains('*') => {
            Err("a wildcard in a URI is only a trailing /* (every identity under that path)".into())
        }
        _ => Ok(Caller::Uri(s.into())),
    }
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a DNS name of 1 to 253 characters must follow dns:".into());
    }
    if name.contains('*') {
        return Err("DNS names are matched exactly: no wildcards".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(format!(
                "{label:?} is not a DNS label (letters, digits and inner hyphens, 1 to 63 of them)"
            ));
        }
    }
    Ok(())
}

/// One part of a pattern: `*`, `prefix*`, or exact; `valid` checks the characters of
/// the fixed text.
fn parse_part(s: &str, what: &str, valid: fn(&str) -> bool) -> Result<Part, String> {
    if s == "*" {
        return Ok(Part::Any);
    }
    let (fixed, prefix) = match s.strip_suffix('*') {
        Some(p) => (p, true),
        None => (s, false),
    };
    if fixed.contains('*') {
        return Err(format!(
            "a wildcard in the {what} is only `*` or a trailing `*` (a prefix)"
        ));
    }
    if fixed.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if !valid(fixed) {
        return Err(format!("{fixed:?} is not a valid {what}"));
    }
    Ok(if prefix {
        Part::Prefix(fixed.into())
    } else {
        Part::Exact(fixed.into())
    })
}

/// Java identifier characters.
fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// A Java name, or the start of one (`com.example.` of a prefix): dot-separated
/// identifiers; only a prefix may end with a dot.
fn is_interface_text(s: &str) -> bool {
    let body = s.strip_suffix('.').unwrap_or(s);
    !body.is_empty()
        && body
            .split('.')
            .all(|seg| !seg.is_empty() && seg.chars().all(is_ident_char))
}

/// A group or version: no separator of the service key or of registry lists, no space.
fn is_variant_text(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/:,".contains(c))
}

fn parse_service(s: &str) -> Result<ServicePattern, String> {
    if s == "*" {
        return Ok(ServicePattern {
            group: Part::Any,
            interface: Part::Any,
            version: Part::Any,
        });
    }
    let (group, rest) = match s.split_once('/') {
        Some((g, rest)) => (Some(g), rest),
        None => (None, s),
    };
    let (interface, version) = match rest.split_once(':') {
        Some((i, v)) => (i, Some(v)),
        None => (rest, None),
    };
    const SHAPE: &str = "expected [GROUP/]INTERFACE[:VERSION] (each part may be * or end in *)";
    let shaped = |e: String| format!("{e}; {SHAPE}");
    if interface.contains(['/', ':']) || version.is_some_and(|v| v.contains(['/', ':'])) {
        return Err(SHAPE.into());
    }
    let group = match group {
        None => Part::Any,
        Some(g) => parse_part(g, "group", is_variant_text).map_err(shaped)?,
    };
    let interface = parse_part(interface, "interface", is_interface_text).map_err(shaped)?;
    if matches!(&interface, Part::Exact(i) if i.ends_with('.')) {
        return Err(shaped("an interface ends with a name, not a dot".into()));
    }
    let version = match version {
        None => Part::Any,
        Some(v) => match parse_part(v, "version", is_variant_text).map_err(shaped)? {
            Part::Exact(v) => Part::Exact(plain_version(&v).into()),
            other => other,
        },
    };
    Ok(ServicePattern {
        group,
        interface,
        version,
    })
}

fn parse_method(s: &str) -> Result<Part, String> {
    parse_part(s, "method name", |m| m.chars().all(is_ident_char))
}

/// Reads and compiles the policy file.
pub(crate) fn load(path: &Path) -> Result<Policy, String> {
    let text = read(path)?;
    Policy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{}: over {MAX_FILE_BYTES} bytes; not a policy",
            path.display()
        ));
    }
    Ok(text)
}

/// What tells a file's versions apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        modified: Option<SystemTime>,
        changed: (i64, i64),
    },
    /// The file could not be looked at (the error's kind).
    Missing(std::io::ErrorKind),
}

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(md) => {
            #[cfg(unix)]
            let (dev, ino, changed) = {
                use std::os::unix::fs::MetadataExt;
                (md.dev(), md.ino(), (md.ctime(), md.ctime_nsec()))
            };
            #[cfg(not(unix))]
            let (dev, ino, changed) = (0, 0, (0, 0));
            Stamp::Present {
                dev,
                ino,
                len: md.len(),
                modified: md.modified().ok(),
                changed,
            }
        }
        Err(e) => Stamp::Missing(e.kind()),
    }
}

/// Watches the policy file for changes (the control thread's).
#[derive(Debug)]
pub(crate) struct Watcher {
    path: PathBuf,
    /// The version last read (or failed).
    seen: Stamp,
    next_check: Instant,
}

impl Watcher {
    /// Reads the policy at `path` for the start.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid policy.
    pub(crate) fn start(path: &Path) -> Result<(Watcher, Policy), String> {
        // Stamped before reading: a change while it is read is read again.
        let seen = stamp(path);
        let policy = load(path)?;
        let w = Watcher {
            path: path.to_owned(),
            seen,
            next_check: Instant::now() + POLL_EVERY,
        };
        Ok((w, policy))
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How long until the next check is due.
    pub(crate) fn until_due(&self, now: Instant) -> Duration {
        self.next_check.saturating_duration_since(now)
    }

    /// If a check is due: `None` if the file has not changed, else the new policy or
    /// why there is none. A version that failed is reported once, not every check.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Result<Policy, String>> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + POLL_EVERY;
        let current = stamp(&self.path);
        if current == self.seen {
            return None;
        }
        self.seen = current;
        Some(match &self.seen {
            Stamp::Missing(kind) => Err(format!(
                "{}: cannot be read ({kind:?})",
                self.path.display()
            )),
            Stamp::Present { .. } => load(&self.path),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(interface: &'a str, version: &'a str, group: &'a str, method: &'a str) -> Call<'a> {
        Call {
            interface,
            version,
            group,
            method,
        }
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn error(text: &str) -> String {
        match Policy::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    const EXAMPLE: &str = r#"{"rules": [
        {"from": ["spiffe://prod.example/ns/shop/*", "dns:cart.shop.svc"],
         "services": ["com.example.Cart", "com.example.Price:1.0.0"], "methods": ["*"]},
        {"name": "health", "from": ["anonymous"], "services": ["com.example.Health"], "methods": ["ping"]}
    ]}"#;

    #[test]
    fn the_example_policy() {
        let p = policy(EXAMPLE);
        assert_eq!(p.rules(), 2);
        let cart = "spiffe://prod.example/ns/shop/sa/cart";
        let allows = |peer: Option<&str>, c: Call<'_>| p.allows(peer, &c);
        assert!(allows(Some(cart), call("com.example.Cart", "", "", "add")));
        assert!(allows(
            Some(cart),
            call("com.example.Cart", "2.0", "blue", "add")
        ));
        assert!(allows(
            Some(cart),
            call("com.example.Price", "1.0.0", "", "get")
        ));
        assert!(!allows(
            Some(cart),
            call("com.example.Price", "2.0.0", "", "get")
        ));
        assert!(!allows(
            Some(cart),
            call("com.example.Price", "", "", "get")
        ));
        assert!(!allows(
            Some(cart),
            call("com.example.Health", "", "", "ping")
        ));
        assert!(allows(
            Some("dns:cart.shop.svc"),
            call("com.example.Cart", "", "", "x")
        ));
        assert!(allows(
            Some("DNS:Cart.Shop.SVC"),
            call("com.example.Cart", "", "", "x")
        ));
        assert!(!allows(
            Some("dns:cart.shop.svc.evil"),
            call("com.example.Cart", "", "", "x")
        ));
        assert!(!allows(
            Some("spiffe://prod.example/ns/shopping/sa/x"),
            call("com.example.Cart", "", "", "x")
        ));
        assert!(!allows(
            Some("spiffe://prod.example/ns/shop/"),
            call("com.example.Cart", "", "", "x")
        ));
        // Anonymous: only the health check's ping.
        assert!(allows(None, call("com.example.Health", "", "", "ping")));
        assert!(!allows(None, call("com.example.Health", "", "", "pong")));
        assert!(!allows(None, call("com.example.Cart", "", "", "add")));
    }

    #[test]
    fn deny_by_default() {
        let p = policy(r#"{"rules": []}"#);
        assert_eq!(p.rules(), 0);
        assert!(!p.allows(None, &call("a.B", "", "", "m")));
        assert!(!p.allows(Some("spiffe://x/y"), &call("a.B", "", "", "m")));
    }

    #[test]
    fn callers() {
        let p = policy(
            r#"{"rules": [{"from": ["*"], "services": ["a.Any"], "methods": ["*"]},
                          {"from": ["spiffe://td/exact"], "services": ["a.Exact"], "methods": ["*"]}]}"#,
        );
        let any = call("a.Any", "", "", "m");
        assert!(p.allows(Some("spiffe://td/whoever"), &any));
        assert!(p.allows(Some("dns:x.y"), &any));
        assert!(!p.allows(None, &any), "* is authenticated peers only");
        let exact = call("a.Exact", "", "", "m");
        assert!(p.allows(Some("spiffe://td/exact"), &exact));
        assert!(!p.allows(Some("spiffe://td/exact/more"), &exact));
        assert!(!p.allows(Some("spiffe://td/exac"), &exact));
        assert!(!p.allows(Some("SPIFFE://td/exact"), &exact));
    }

    #[test]
    fn services_with_groups_versions_and_wildcards() {
        let p = policy(
            r#"{"rules": [{"from": ["anonymous"], "methods": ["*"], "services": [
                "blue/a.Grouped",
                "a.Versioned:1.0",
                "green/a.Both:2.0",
                "*/a.AnyGroup:*",
                "com.example.*",
                "a.Line:1.*",
                "team-*/a.Teams",
                "a.Zero:0.0.0"
            ]}]}"#,
        );
        let ok = |i, v, g| p.allows(None, &call(i, v, g, "m"));
        assert!(ok("a.Grouped", "", "blue"));
        assert!(ok("a.Grouped", "9", "blue"));
        assert!(!ok("a.Grouped", "", ""));
        assert!(!ok("a.Grouped", "", "green"));
        assert!(ok("a.Versioned", "1.0", ""));
        assert!(ok("a.Versioned", "1.0", "any"));
        assert!(!ok("a.Versioned", "1.0.1", ""));
        assert!(!ok("a.Versioned", "", ""));
        assert!(ok("a.Both", "2.0", "green"));
        assert!(!ok("a.Both", "2.0", ""));
        assert!(!ok("a.Both", "1.0", "green"));
        assert!(ok("a.AnyGroup", "", ""));
        assert!(ok("a.AnyGroup", "3", "x"));
        assert!(ok("com.example.Cart", "1", "g"));
        assert!(ok("com.example.sub.Deep", "", ""));
        assert!(!ok("com.examples.Cart", "", ""));
        assert!(ok("a.Line", "1.2", ""));
        assert!(!ok("a.Line", "2.0", ""));
        assert!(ok("a.Teams", "", "team-a"));
        assert!(!ok("a.Teams", "", "ops"));
        assert!(ok("a.Zero", "", ""));
        assert!(ok("a.Zero", "0.0.0", ""));
        assert!(!ok("a.Zero", "1.0", ""));
        assert!(!ok("a.Other", "", ""));
        let all =
            policy(r#"{"rules": [{"from": ["anonymous"], "services": ["*"], "methods": ["*"]}]}"#);
        assert!(all.allows(None, &call("x.Y", "1", "g", "z")));
    }

    #[test]
    fn methods() {
        let p = policy(
            r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"], "methods": ["get", "list*", "$invoke"]}]}"#,
        );
        let ok = |m| p.allows(None, &call("a.B", "", "", m));
        assert!(ok("get"));
        assert!(!ok("getAll"));
        assert!(!ok("ge"));
        assert!(ok("list"));
        assert!(ok("listAll"));
        assert!(ok("$invoke"));
        assert!(!ok("delete"));
    }

    #[test]
    fn bad_policies_say_where_and_why() {
        let cases: &[(&str, &str)] = &[
            ("", "not JSON: EOF while parsing a value at line 1 column 0"),
            (
                "{\"rules\": [\n  {\"from\": [\"anonymous\"],\n   \"services\": [\"a.B\"]\n   \"methods\": [\"*\"]}]}",
                "not JSON: expected `,` or `}` at line 4 column 4",
            ),
            ("[]", "expected an object {\"rules\": [...]}, found an array"),
            ("{}", "missing field \"rules\" (an array of rules)"),
            (r#"{"rules": {}}"#, "\"rules\" must be an array, not an object"),
            (
                r#"{"rules": [], "rule": []}"#,
                "the top level: unknown field \"rule\" (expected \"rules\")",
            ),
            (r#"{"rules": [7]}"#, "rule 1: expected an object, found a number"),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"], "methods": ["*"]},
                              {"name": "cart", "from": ["anonymous"], "services": ["a.B"], "method": ["*"]}]}"#,
                "rule 2 (\"cart\"): unknown field \"method\" (expected \"name\", \"from\", \"services\", \"methods\")",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"]}]}"#,
                "rule 1: missing field \"methods\"",
            ),
            (
                r#"{"rules": [{"from": [], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" is empty (a rule must name at least one)",
            ),
            (
                r#"{"rules": [{"from": "anonymous", "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" must be an array of strings, not a string",
            ),
            (
                r#"{"rules": [{"from": ["anonymous", 3], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" entry 2 must be a string, not a number",
            ),
            (
                r#"{"rules": [{"from": ["cart"], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" entry 1 \"cart\": expected a URI identity (spiffe://trust-domain/path), a URI prefix ending in /*, dns:NAME, * (any authenticated peer) or anonymous",
            ),
            (
                r#"{"rules": [{"from": ["spiffe://td/*/x"], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" entry 1 \"spiffe://td/*/x\": a wildcard in a URI is only a trailing /* (every identity under that path)",
            ),
            (
                r#"{"rules": [{"from": ["spiffe://td/ns*"], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" entry 1 \"spiffe://td/ns*\": a wildcard in a URI is only a trailing /* (every identity under that path)",
            ),
            (
                r#"{"rules": [{"from": ["dns:*.shop.svc"], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" entry 1 \"dns:*.shop.svc\": DNS names are matched exactly: no wildcards",
            ),
            (
                r#"{"rules": [{"from": ["dns:cart..svc"], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"from\" entry 1 \"dns:cart..svc\": \"\" is not a DNS label (letters, digits and inner hyphens, 1 to 63 of them)",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a.B:1.0:2"], "methods": ["*"]}]}"#,
                "rule 1: \"services\" entry 1 \"a.B:1.0:2\": expected [GROUP/]INTERFACE[:VERSION] (each part may be * or end in *)",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["g/"], "methods": ["*"]}]}"#,
                "rule 1: \"services\" entry 1 \"g/\": the interface is empty; expected [GROUP/]INTERFACE[:VERSION] (each part may be * or end in *)",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a.*.B"], "methods": ["*"]}]}"#,
                "rule 1: \"services\" entry 1 \"a.*.B\": a wildcard in the interface is only `*` or a trailing `*` (a prefix); expected [GROUP/]INTERFACE[:VERSION] (each part may be * or end in *)",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a b.C"], "methods": ["*"]}]}"#,
                "rule 1: \"services\" entry 1 \"a b.C\": \"a b.C\" is not a valid interface; expected [GROUP/]INTERFACE[:VERSION] (each part may be * or end in *)",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a.B."], "methods": ["*"]}]}"#,
                "rule 1: \"services\" entry 1 \"a.B.\": an interface ends with a name, not a dot; expected [GROUP/]INTERFACE[:VERSION] (each part may be * or end in *)",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"], "methods": ["get-all"]}]}"#,
                "rule 1: \"methods\" entry 1 \"get-all\": \"get-all\" is not a valid method name",
            ),
            (
                r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"], "methods": ["*get"]}]}"#,
                "rule 1: \"methods\" entry 1 \"*get\": a wildcard in the method name is only `*` or a trailing `*` (a prefix)",
            ),
            (
                r#"{"rules": [{"name": 1, "from": ["anonymous"], "services": ["a.B"], "methods": ["*"]}]}"#,
                "rule 1: \"name\" must be a string, not a number",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&error(text), want, "{text}");
        }
    }

    #[test]
    fn refusals_name_the_peer_and_the_call() {
        assert_eq!(
            forbidden_message(None, &call("com.example.Cart", "1.0.0", "blue", "add")),
            "forbidden: anonymous peer may not call blue/com.example.Cart:1.0.0.add"
        );
        assert_eq!(
            forbidden_message(Some("spiffe://td/a"), &call("a.B", "", "", "m")),
            "forbidden: spiffe://td/a may not call a.B.m"
        );
    }

    #[test]
    fn a_connection_keeps_its_decisions_until_the_policy_or_the_call_changes() {
        let first = policy(
            r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"], "methods": ["get"]}]}"#,
        );
        let mut cache = PeerCache::default();
        let get = call("a.B", "", "", "get");
        let put = call("a.B", "", "", "put");
        assert!(cache.allows(&first, None, Some(1), &get));
        assert!(!cache.allows(&first, None, Some(2), &put));
        // Remembered by call id ...
        assert!(cache.allows(&first, None, Some(1), &put));
        // ... until the id is defined again.
        cache.forget(1);
        assert!(!cache.allows(&first, None, Some(1), &put));
        // A new policy decides again.
        let second = policy(
            r#"{"rules": [{"from": ["anonymous"], "services": ["a.B"], "methods": ["*"]}]}"#,
        );
        assert!(cache.allows(&second, None, Some(1), &put));
        assert!(cache.allows(&second, None, Some(2), &put));
        assert!(cache.allows(&second, None, None, &put));
        // So does a new identity.
        cache.invalidate();
        assert!(!cache.allows(&second, Some("spiffe://td/x"), Some(1), &put));
        // An id past the protocol's range is decided, not kept.
        assert!(!cache.allows(&second, Some("spiffe://td/x"), Some(u32::MAX), &put));
        assert!(cache.decisions.len() <= codec::agent::MAX_CALLS);
    }

    #[test]
    fn the_watcher_reloads_a_changed_file_and_reports_a_broken_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.json");
        let write = |text: &str| {
            let tmp = dir.path().join("authz.json.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        write(r#"{"rules": []}"#);
        let (mut w, p) = Watcher::start(&path).unwrap();
        assert_eq!(p.rules(), 0);
        let mut now = Instant::now();
        let mut tick = || {
            now += POLL_EVERY;
            now
        };
        assert!(w.poll(tick()).is_none(), "unchanged");
        write(EXAMPLE);
        assert_eq!(w.poll(tick()).unwrap().unwrap().rules(), 2);
        assert!(w.poll(tick()).is_none());
        write("{\"rules\": [");
        let e = w.poll(tick()).unwrap().unwrap_err();
        assert!(e.contains("authz.json: not JSON"), "{e}");
        assert!(w.poll(tick()).is_none(), "reported once");
        std::fs::remove_file(&path).unwrap();
        let e = w.poll(tick()).unwrap().unwrap_err();
        assert!(e.contains("cannot be read (NotFound)"), "{e}");
        assert!(w.poll(tick()).is_none());
        // Not before it is due.
        write(EXAMPLE);
        assert!(w.poll(Instant::now()).is_none());
        assert_eq!(w.poll(tick()).unwrap().unwrap().rules(), 2);
        assert!(Watcher::start(&dir.path().join("none.json")).is_err());
    }
}
