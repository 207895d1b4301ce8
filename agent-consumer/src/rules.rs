//! Traffic rules: per service, routes tried in order (match a call by method and
//! attachments; send it to a weighted split of instance subsets chosen by label,
//! version or group; a timeout, retry budget and rate limit of its own), a service-wide
//! rate limit, and outlier ejection.
//!
//! A rules document is JSON, kept in the registry beside the service's membership
//! (`registry::Registry::watch_rules`). It is parsed strictly (unknown fields refused)
//! and validated as a whole into [`Rules`] on the discovery thread; a loop only matches,
//! counts tokens and picks. A document that fails keeps the last good one in force.
//!
//! ```json
//! {
//!   "routes": [
//!     { "name": "beta users", "match": { "attachments": { "user-tier": "beta" } },
//!       "to": [ { "labels": { "track": "canary" } } ] },
//!     { "name": "beta by header", "match": { "headers": { "x-user-tier": "beta" } },
//!       "to": [ { "labels": { "track": "canary" } } ] },
//!     { "name": "batch jobs", "match": { "callers": "spiffe://prod/batch/*" },
//!       "to": [ { "labels": { "pool": "batch" } } ] },
//!     { "name": "split", "match": { "method": ["hash", "echo"] },
//!       "to": [ { "labels": { "track": "stable" }, "weight": 90 },
//!               { "labels": { "track": "canary" }, "weight": 10 } ],
//!       "timeout_ms": 800, "retries": 1, "rate_limit": { "rps": 5000, "burst": 500 } }
//!   ],
//!   "rate_limit": { "rps": 20000, "burst": 2000 },
//!   "outlier": { "consecutive_failures": 5, "base_ejection_ms": 1000,
//!                "max_ejection_ms": 30000, "max_ejected_percent": 50,
//!                "success_rate_below": 80, "min_requests": 20, "window_ms": 5000 }
//! }
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use registry::Instance;
use serde::Deserialize;

/// Largest number of routes one service may have.
pub const MAX_ROUTES: usize = 256;
/// Largest number of destinations (subsets) in one route.
pub const MAX_DESTINATIONS: usize = 32;
/// Prefix of the registry metadata keys that carry instance labels
/// (`provider-agent --label k=v` registers `label.k=v`).
pub const LABEL_PREFIX: &str = "label.";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    routes: Vec<RouteDoc>,
    #[serde(default)]
    rate_limit: Option<RateDoc>,
    #[serde(default)]
    outlier: Option<OutlierDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDoc {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: MatchDoc,
    #[serde(default)]
    to: Vec<DestDoc>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    rate_limit: Option<RateDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchDoc {
    #[serde(default)]
    method: Option<OneOrMany>,
    #[serde(default)]
    attachments: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    callers: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestDoc {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateDoc {
    rps: f64,
    #[serde(default)]
    burst: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutlierDoc {
    #[serde(default)]
    consecutive_failures: Option<u32>,
    #[serde(default)]
    base_ejection_ms: Option<u64>,
    #[serde(default)]
    max_ejection_ms: Option<u64>,
    #[serde(default)]
    max_ejected_percent: Option<u32>,
    #[serde(default)]
    success_rate_below: Option<f64>,
    #[serde(default)]
    min_requests: Option<u32>,
    #[serde(default)]
    window_ms: Option<u64>,
}

/// A service's rules, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Routes, tried in order; a call no route matches goes to the whole pool.
    pub routes: Vec<Route>,
    /// Calls per second of the whole service on this agent.
    pub rate_limit: Option<Rate>,
    /// When a failing instance is taken out of the pool.
    pub outlier: Option<Outlier>,
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its name (for logs and `/rules`), or its position.
    pub name: String,
    /// Methods it matches; empty: any.
    pub methods: Vec<String>,
    /// Attachments a call must carry, with these values.
    pub attachments: Vec<(String, String)>,
    /// HTTP request headers (names lower-case) a call must carry, with these values:
    /// only HTTP calls can match a route that names some.
    pub headers: Vec<(String, String)>,
    /// Caller identities (the SPIFFE ID or `dns:` name of the client certificate an
    /// HTTP caller proved, `--http-tls-ca`), one of which the call's must be; a name
    /// ending in `/*` matches every identity under that path. Empty: any caller.
    pub callers: Vec<String>,
    /// Where its calls go, each with a weight; empty: the whole pool.
    pub to: Vec<Destination>,
    /// Sum of the destinations' weights.
    pub total_weight: u32,
    /// End-to-end timeout of its calls (at most the caller's own).
    pub timeout: Option<Duration>,
    /// Retries on another instance, in place of `--retries`.
    pub retries: Option<u32>,
    /// Its own rate limit.
    pub rate_limit: Option<Rate>,
}

/// A subset of a service's instances, and its share of a route's calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// Labels an instance must have (`label.<key>` in its registry metadata).
    pub labels: Vec<(String, String)>,
    /// A version it must serve.
    pub version: Option<String>,
    /// A group it must serve.
    pub group: Option<String>,
    /// Its share of the route's calls.
    pub weight: u32,
}

/// A token bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket size (calls admitted at once after a quiet spell).
    pub burst: f64,
}

/// Outlier ejection: an instance failing `consecutive_failures` calls in a row, or
/// (when `success_rate` is set) answering less than that share of at least
/// `min_requests` calls over the last `window`, is left out for `base_ejection`
/// (doubling with each ejection in a row, up to `max_ejection`), never more than
/// `max_ejected_percent` of the pool at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// First ejection's length.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of the pool ejected at once, in percent.
    pub max_ejected_percent: u32,
    /// Success rate (percent, 0-100) under which an instance is ejected; `None`: by
    /// failures in a row only.
    pub success_rate: Option<f64>,
    /// Calls an instance must have had in the window before its rate counts.
    pub min_requests: u32,
    /// The success rate's window, in whole seconds (1 to `lb::RECENT_SECS`).
    pub window_secs: usize,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
            success_rate: None,
            min_requests: 20,
            window_secs: 5,
        }
    }
}

impl Outlier {
    /// Why an instance with `consecutive` failures in a row and `calls` calls of which
    /// `failures` failed in the window should be ejected, if it should.
    pub fn verdict(&self, consecutive: u32, calls: u64, failures: u64) -> Option<String> {
        if consecutive >= self.consecutive_failures {
            return Some(format!("{consecutive} failures in a row"));
        }
        let below = self.success_rate?;
        if calls == 0 || calls < u64::from(self.min_requests) {
            return None;
        }
        let rate = (calls - failures.min(calls)) as f64 * 100.0 / calls as f64;
        (rate < below).then(|| {
            format!(
                "success rate {rate:.1}% < {below}% over {calls} calls in {} s",
                self.window_secs
            )
        })
    }
}

impl Rules {
    /// Parses and validates a rules document against the service's current instances
    /// (`None`: not known yet, so subsets are not checked against them).
    ///
    /// # Errors
    /// Why the document is refused, naming the route and field.
    pub fn parse(text: &str, instances: Option<&[Instance]>) -> Result<Rules, String> {
        let doc: Doc = serde_json::from_str(text).map_err(|e| format!("bad rules: {e}"))?;
        if doc.routes.len() > MAX_ROUTES {
            return Err(format!("{} routes, at most {MAX_ROUTES}", doc.routes.len()));
        }
        let mut routes = Vec::with_capacity(doc.routes.len());
        for (i, r) in doc.routes.into_iter().enumerate() {
            let name = r.name.unwrap_or_else(|| format!("route {i}"));
            routes.push(route(
                name,
                r.matches,
                r.to,
                r.timeout_ms,
                r.retries,
                r.rate_limit,
            )?);
        }
        if let Some(list) = instances {
            for r in &routes {
                for (j, d) in r.to.iter().enumerate() {
                    if !list.iter().any(|i| d.selects(i)) {
                        return Err(format!(
                            "{}: destination {j} ({}) matches no instance of the service",
                            r.name,
                            d.describe()
                        ));
                    }
                }
            }
        }
        Ok(Rules {
            routes,
            rate_limit: doc.rate_limit.map(|r| rate(&r, "rate_limit")).transpose()?,
            outlier: doc.outlier.map(outlier).transpose()?,
        })
    }

    /// The first route a call of `method` with `attachments` matches: for an HTTP call,
    /// `header(name)` looks up request headers (lower-case names); `caller` is the
    /// identity its caller proved (`None`: none, which matches only routes that name no
    /// callers).
    pub fn route_for<'a, A>(
        &self,
        method: &str,
        attachments: A,
        header: &Headers<'_>,
        caller: Option<&str>,
    ) -> Option<usize>
    where
        A: IntoIterator<Item = (&'a str, &'a str)> + Clone,
    {
        self.routes.iter().position(|r| {
            r.matches(method, attachments.clone())
                && r.headers_match(header)
                && r.caller_matches(caller)
        })
    }

    /// Whether some route matches on the caller's identity (so a loop looks it up).
    pub fn names_callers(&self) -> bool {
        self.routes.iter().any(|r| !r.callers.is_empty())
    }
}

fn route(
    name: String,
    m: MatchDoc,
    to: Vec<DestDoc>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    rate_limit: Option<RateDoc>,
) -> Result<Route, String> {
    let methods = match m.method {
        None => Vec::new(),
        Some(OneOrMany::One(m)) => vec![m],
        Some(OneOrMany::Many(v)) if v.is_empty() => {
            return Err(format!("{name}: match.method is an empty list"))
        }
        Some(OneOrMany::Many(v)) => v,
    };
    if methods.iter().any(String::is_empty) {
        return Err(format!("{name}: match.method names an empty method"));
    }
    if to.len() > MAX_DESTINATIONS {
        return Err(format!(
            "{name}: {} destinations, at most {MAX_DESTINATIONS}",
            to.len()
        ));
    }
    let single = to.len() == 1;
    let mut dests = Vec::with_capacity(to.len());
    for (j, d) in to.into_iter().enumerate() {
        let weight = match d.weight {
            Some(w) => w,
            None if single => 1,
            None => return Err(format!("{name}: destination {j} needs a weight (a split)")),
        };
        if weight > 1_000_000 {
            return Err(format!(
                "{name}: destination {j} weight {weight} over 1000000"
            ));
        }
        dests.push(Destination {
            labels: d.labels.into_iter().collect(),
            version: d.version,
            group: d.group,
            weight,
        });
    }
    let total_weight: u32 = dests.iter().map(|d| d.weight).sum();
    if !dests.is_empty() && total_weight == 0 {
        return Err(format!("{name}: the destinations' weights sum to 0"));
    }
    if retries.is_some_and(|r| r > 10) {
        return Err(format!("{name}: retries over 10"));
    }
    let timeout = match timeout_ms {
        Some(0) => return Err(format!("{name}: timeout_ms 0")),
        Some(ms) => Some(Duration::from_millis(ms.min(600_000))),
        None => None,
    };
    let callers = match m.callers {
        None => Vec::new(),
        Some(OneOrMany::One(c)) => vec![c],
        Some(OneOrMany::Many(v)) if v.is_empty() => {
            return Err(format!("{name}: match.callers is an empty list"))
        }
        Some(OneOrMany::Many(v)) => v,
    };
    if let Some(bad) = callers
        .iter()
        .find(|c| !(c.starts_with("spiffe://") || c.starts_with("dns:")))
    {
        return Err(format!(
            "{name}: match.callers names {bad:?}: an identity is spiffe://... or dns:..."
        ));
    }
    let mut headers = Vec::with_capacity(m.headers.len());
    for (k, v) in m.headers {
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(format!("{name}: match.headers names a bad header {k:?}"));
        }
        headers.push((k.to_ascii_lowercase(), v));
    }
    Ok(Route {
        methods,
        attachments: m.attachments.into_iter().collect(),
        headers,
        callers,
        to: dests,
        total_weight,
        timeout,
        retries,
        rate_limit: rate_limit.map(|r| rate(&r, &name)).transpose()?,
        name,
    })
}

fn rate(r: &RateDoc, what: &str) -> Result<Rate, String> {
    if !(r.rps.is_finite() && r.rps > 0.0) {
        return Err(format!("{what}: rps must be a positive number"));
    }
    let burst = r.burst.unwrap_or(r.rps.max(1.0));
    if !(burst.is_finite() && burst >= 1.0) {
        return Err(format!("{what}: burst must be at least 1"));
    }
    Ok(Rate {
        per_second: r.rps,
        burst,
    })
}

fn outlier(o: OutlierDoc) -> Result<Outlier, String> {
    let d = Outlier::default();
    let out = Outlier {
        consecutive_failures: o.consecutive_failures.unwrap_or(d.consecutive_failures),
        base_ejection: o
            .base_ejection_ms
            .map_or(d.base_ejection, Duration::from_millis),
        max_ejection: o
            .max_ejection_ms
            .map_or(d.max_ejection, Duration::from_millis),
        max_ejected_percent: o.max_ejected_percent.unwrap_or(d.max_ejected_percent),
        success_rate: o.success_rate_below,
        min_requests: o.min_requests.unwrap_or(d.min_requests),
        window_secs: match o.window_ms {
            None => d.window_secs,
            Some(ms) => ms.div_ceil(1000) as usize,
        },
    };
    if let Some(r) = out.success_rate {
        if !(r > 0.0 && r <= 100.0) {
            return Err("outlier: success_rate_below must be in (0, 100]".into());
        }
    }
    if out.window_secs == 0 || out.window_secs > crate::lb::RECENT_SECS {
        return Err(format!(
            "outlier: window_ms must be 1 to {} (whole seconds are used)",
            crate::lb::RECENT_SECS * 1000
        ));
    }
    if out.consecutive_failures == 0 {
        return Err("outlier: consecutive_failures must be at least 1".into());
    }
    if out.base_ejection.is_zero() || out.max_ejection < out.base_ejection {
        return Err("outlier: need 0 < base_ejection_ms <= max_ejection_ms".into());
    }
    if out.max_ejected_percent > 100 {
        return Err("outlier: max_ejected_percent over 100".into());
    }
    Ok(out)
}

impl Route {
    /// Whether a call of `method` with `attachments` takes this route.
    pub fn matches<'a>(
        &self,
        method: &str,
        attachments: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.attachments.iter().all(|(k, v)| {
                attachments
                    .clone()
                    .into_iter()
                    .any(|(ak, av)| ak == k && av == v)
            })
    }

    /// Whether the call's HTTP headers (none for other calls) carry every header this
    /// route names, with its value.
    pub fn headers_match(&self, header: &Headers<'_>) -> bool {
        self.headers.iter().all(|(k, v)| match header {
            Some(lookup) => lookup(k).is_some_and(|got| got.trim_ascii() == v.as_bytes()),
            None => false,
        })
    }

    /// Whether a caller that proved `caller` (or none) may take this route.
    pub fn caller_matches(&self, caller: Option<&str>) -> bool {
        if self.callers.is_empty() {
            return true;
        }
        let Some(caller) = caller else { return false };
        self.callers.iter().any(|c| match c.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => caller.starts_with(prefix),
            _ => c == caller,
        })
    }

    /// The destination a random `draw` in `0..total_weight` falls in.
    pub fn destination(&self, draw: u32) -> Option<usize> {
        let mut left = draw;
        for (i, d) in self.to.iter().enumerate() {
            if left < d.weight {
                return Some(i);
            }
            left -= d.weight;
        }
        None
    }
}

impl Destination {
    /// Whether `instance` is in this subset.
    pub fn selects(&self, instance: &Instance) -> bool {
        self.labels.iter().all(|(k, v)| {
            instance
                .meta
                .iter()
                .any(|(mk, mv)| mk.strip_prefix(LABEL_PREFIX) == Some(k.as_str()) && mv == v)
        }) && self.serves(&instance.variants())
    }

    /// Whether a member with these labels and variants is in this subset.
    pub fn selects_member(
        &self,
        labels: &[(String, String)],
        variants: &[registry::Variant],
    ) -> bool {
        self.labels.iter().all(|l| labels.contains(l)) && self.serves(variants)
    }

    fn serves(&self, variants: &[registry::Variant]) -> bool {
        let v = |x: &registry::Variant| {
            self.version
                .as_deref()
                .is_none_or(|want| x.version == want || (want.is_empty() && x.version == "0.0.0"))
                && self.group.as_deref().is_none_or(|want| x.group == want)
        };
        variants.iter().any(v)
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some(v) = &self.version {
            parts.push(format!("version {v}"));
        }
        if let Some(g) = &self.group {
            parts.push(format!("group {g}"));
        }
        if parts.is_empty() {
            "any instance".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The labels of an instance (its `label.*` metadata), sorted.
pub fn labels_of(instance: &Instance) -> Vec<(String, String)> {
    instance
        .meta
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(LABEL_PREFIX)?.to_owned(), v.clone())))
        .collect()
}

/// An HTTP call's header lookup (by lower-case name); `None` for other calls.
pub type Headers<'a> = Option<&'a dyn Fn(&str) -> Option<&'a [u8]>>;

/// A token bucket on the loop's clock: admits a call when a token is there.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `rate`, of which this loop (one of `loops`) takes its share.
    pub fn new(rate: Rate, loops: usize, now: Instant) -> Bucket {
        let share = loops.max(1) as f64;
        let rate = Rate {
            per_second: rate.per_second / share,
            burst: (rate.burst / share).max(1.0),
        };
        Bucket {
            rate,
            tokens: rate.burst,
            at: now,
        }
    }

    /// Takes a token if there is one; else how long until there is.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate.per_second;
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(addr: &str, labels: &[(&str, &str)]) -> Instance {
        let mut i = Instance::new("S", addr);
        for (k, v) in labels {
            i = i.with_meta(format!("{LABEL_PREFIX}{k}"), *v);
        }
        i
    }

    const SPLIT: &str = r#"{
        "routes": [
          { "name": "beta", "match": { "attachments": { "tier": "beta" } },
            "to": [ { "labels": { "track": "canary" } } ] },
          { "name": "split", "match": { "method": ["hash", "echo"] },
            "to": [ { "labels": { "track": "stable" }, "weight": 90 },
                    { "labels": { "track": "canary" }, "weight": 10 } ],
            "timeout_ms": 800, "retries": 1, "rate_limit": { "rps": 100, "burst": 10 } }
        ],
        "outlier": { "consecutive_failures": 3 }
    }"#;

    #[test]
    fn a_document_parses_into_ordered_routes() {
        let list = [
            inst("a:1", &[("track", "stable")]),
            inst("b:1", &[("track", "canary")]),
        ];
        let r = Rules::parse(SPLIT, Some(&list)).expect("valid");
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.routes[1].total_weight, 100);
        assert_eq!(r.routes[1].timeout, Some(Duration::from_millis(800)));
        assert_eq!(r.outlier.map(|o| o.consecutive_failures), Some(3));
        // Attachments first (route order), then methods, else none.
        assert_eq!(
            r.route_for("hash", [("tier", "beta")], &None, None),
            Some(0)
        );
        assert_eq!(
            r.route_for("hash", [("tier", "gold")], &None, None),
            Some(1)
        );
        assert_eq!(r.route_for("other", [("tier", "gold")], &None, None), None);
        assert!(r.routes[0].to[0].selects(&list[1]));
        assert!(!r.routes[0].to[0].selects(&list[0]));
        assert_eq!(r.routes[1].destination(89), Some(0));
        assert_eq!(r.routes[1].destination(90), Some(1));
        assert_eq!(r.routes[1].destination(100), None);
    }

    #[test]
    fn header_routes_match_http_calls_carrying_the_header() {
        let doc = r#"{"routes": [{"match": {"headers": {"X-User-Tier": "beta"}}}]}"#;
        let r = Rules::parse(doc, None).expect("valid");
        let beta = |name: &str| (name == "x-user-tier").then_some(&b" beta "[..]);
        let gold = |name: &str| (name == "x-user-tier").then_some(&b"gold"[..]);
        assert_eq!(r.route_for("m", [], &Some(&beta), None), Some(0));
        assert_eq!(r.route_for("m", [], &Some(&gold), None), None);
        assert_eq!(r.route_for("m", [], &None, None), None, "not an HTTP call");
    }

    #[test]
    fn outliers_are_found_by_failures_in_a_row_or_by_success_rate() {
        let doc = r#"{"outlier": {"consecutive_failures": 5, "success_rate_below": 80,
                                  "min_requests": 10, "window_ms": 2500}}"#;
        let o = Rules::parse(doc, None)
            .expect("valid")
            .outlier
            .expect("outlier");
        assert_eq!(o.window_secs, 3, "whole seconds, rounded up");
        assert!(o.verdict(5, 0, 0).is_some(), "five in a row");
        assert!(o.verdict(1, 9, 9).is_none(), "too few calls to judge");
        assert!(o.verdict(1, 10, 3).is_some(), "70% < 80%");
        assert!(o.verdict(1, 10, 2).is_none(), "80% is not under 80%");
        let plain = Rules::parse(r#"{"outlier": {}}"#, None)
            .unwrap()
            .outlier
            .unwrap();
        assert!(
            plain.verdict(1, 100, 99).is_none(),
            "no rate rule: in a row only"
        );
    }

    #[test]
    fn caller_routes_match_the_identity_a_caller_proved() {
        let doc = r#"{"routes": [
            {"match": {"callers": "spiffe://td/ns/batch/*"}},
            {"match": {"callers": ["spiffe://td/web", "dns:admin.test"]}}]}"#;
        let r = Rules::parse(doc, None).expect("valid");
        assert!(r.names_callers());
        let to = |c: Option<&str>| r.route_for("m", [], &None, c);
        assert_eq!(to(Some("spiffe://td/ns/batch/nightly")), Some(0));
        assert_eq!(
            to(Some("spiffe://td/ns/batchy")),
            None,
            "a path, not a prefix"
        );
        assert_eq!(to(Some("spiffe://td/web")), Some(1));
        assert_eq!(to(Some("dns:admin.test")), Some(1));
        assert_eq!(to(Some("spiffe://td/webx")), None);
        assert_eq!(to(None), None, "no certificate, no identity");
        let plain = Rules::parse(r#"{"routes": [{"match": {}}]}"#, None).unwrap();
        assert!(!plain.names_callers());
    }

    #[test]
    fn broken_documents_are_refused_saying_why() {
        let list = [inst("a:1", &[("track", "stable")])];
        for (doc, why) in [
            ("{", "bad rules"),
            (r#"{"routes": [], "colour": 1}"#, "unknown field"),
            (r#"{"routes": [{"mtach": {}}]}"#, "unknown field"),
            (
                r#"{"routes": [{"to": [{"weight": 0}, {"weight": 0}]}]}"#,
                "sum to 0",
            ),
            (
                r#"{"routes": [{"to": [{"labels": {"track": "canary"}}]}]}"#,
                "matches no instance",
            ),
            (r#"{"routes": [{"to": [{}, {}]}]}"#, "needs a weight"),
            (r#"{"rate_limit": {"rps": 0}}"#, "positive"),
            (r#"{"outlier": {"consecutive_failures": 0}}"#, "at least 1"),
            (r#"{"routes": [{"match": {"callers": []}}]}"#, "empty list"),
            (
                r#"{"routes": [{"match": {"callers": "web"}}]}"#,
                "spiffe://",
            ),
            (r#"{"outlier": {"success_rate_below": 0}}"#, "(0, 100]"),
            (r#"{"outlier": {"success_rate_below": 101}}"#, "(0, 100]"),
            (r#"{"outlier": {"window_ms": 60000}}"#, "window_ms"),
        ] {
            let err = Rules::parse(doc, Some(&list)).expect_err(doc);
            assert!(err.contains(why), "{doc}: {err}");
        }
    }

    #[test]
    fn a_bucket_holds_its_rate_after_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            Rate {
                per_second: 100.0,
                burst: 10.0,
            },
            1,
            t0,
        );
        let burst = (0..50).filter(|_| b.take(t0).is_ok()).count();
        assert_eq!(burst, 10);
        // One second later: 100 more, not 101.
        let t1 = t0 + Duration::from_secs(1);
        let more = (0..200).filter(|_| b.take(t1).is_ok()).count();
        assert_eq!(more, 10, "the bucket holds at most its burst");
        let mut admitted = 0;
        for ms in 1..=1000 {
            let t = t1 + Duration::from_millis(ms);
            admitted += usize::from(b.take(t).is_ok());
        }
        assert!((99..=101).contains(&admitted), "{admitted}");
        assert!(b.take(t1 + Duration::from_millis(1000)).is_err());
    }
}
