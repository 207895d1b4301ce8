//! Traffic rules documents: what every backend's rules watch shares.
//!
//! A backend finds a service's document (or none) and hands it to a [`Tracker`], which
//! checks it (at most [`MAX_RULES_BYTES`], UTF-8), keeps the last good one, logs and
//! counts a bad one once per version, and delivers only what changed. The document itself
//! is opaque here: the consumer-agent parses and validates it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Error, RulesSink, MAX_RULES_BYTES};

/// What a backend found where a service's rules live.
#[derive(Debug)]
pub(crate) enum Found<'a> {
    /// No document.
    Absent,
    /// A document, read; `version` tells one write from another (etcd's mod revision,
    /// ZooKeeper's mzxid, the file's identity), so that a bad one is logged and counted
    /// once, not at every read.
    Doc { bytes: &'a [u8], version: u64 },
    /// A document judged bad before it was read (a file too large, not a regular file).
    Bad { why: String, version: u64 },
}

/// Why `bytes` cannot be delivered as a rules document, if it cannot.
fn check(bytes: &[u8]) -> Result<&str, String> {
    if bytes.len() > MAX_RULES_BYTES {
        return Err(too_large(bytes.len()));
    }
    std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 ({e})"))
}

fn too_large(len: usize) -> String {
    format!("{len} bytes, more than a rules document may have ({MAX_RULES_BYTES})")
}

/// Refuses a document [`Registry::put_rules`](crate::Registry::put_rules) must not store.
pub(crate) fn check_put(rules: &str) -> Result<(), Error> {
    if rules.len() > MAX_RULES_BYTES {
        return Err(Error::InvalidRules(too_large(rules.len())));
    }
    Ok(())
}

/// One rules watch's state: the last good document, what was delivered, the last bad
/// version logged.
pub(crate) struct Tracker {
    /// Where the document lives, for log lines.
    what: String,
    sink: Arc<RulesSink>,
    skipped: Arc<AtomicU64>,
    /// The state to deliver: the last good document, or none.
    current: Option<String>,
    /// What was delivered last (`None`: nothing yet).
    delivered: Option<Option<String>>,
    /// The version of the last bad document logged and counted.
    bad: Option<u64>,
}

impl Tracker {
    pub(crate) fn new(what: String, sink: Arc<RulesSink>, skipped: Arc<AtomicU64>) -> Tracker {
        Tracker {
            what,
            sink,
            skipped,
            current: None,
            delivered: None,
            bad: None,
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.sink.is_stopped()
    }

    /// Takes what was found (to deliver with [`deliver`](Self::deliver)). A bad document
    /// leaves the state as it was, and is logged and counted in `skipped_entries` once
    /// per version.
    pub(crate) fn note(&mut self, found: Found<'_>) {
        let (why, version) = match found {
            Found::Absent => {
                self.current = None;
                return;
            }
            Found::Doc { bytes, version } => match check(bytes) {
                Ok(text) => {
                    if self.current.as_deref() != Some(text) {
                        self.current = Some(text.to_owned());
                    }
                    return;
                }
                Err(why) => (why, version),
            },
            Found::Bad { why, version } => (why, version),
        };
        if self.bad == Some(version) {
            log::debug!("registry: skipping the rules in {}: {why}", self.what);
            return;
        }
        self.bad = Some(version);
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let kept = match &self.current {
            Some(doc) => format!("keeping the last good document ({} bytes)", doc.len()),
            None => "keeping none".to_owned(),
        };
        log::warn!(
            "registry: skipping the rules in {}: {why}; {kept}",
            self.what
        );
    }

    /// Delivers the state if it is not what was delivered last.
    pub(crate) fn deliver(&mut self) {
        if self.delivered.as_ref() != Some(&self.current) {
            self.delivered = Some(self.current.clone());
            self.sink.deliver(self.current.clone());
        }
    }

    /// What the watch keeps while its backend is unreachable, for a warning; `None` if
    /// it delivered nothing yet. (The file registry, never unreachable, has no use for it.)
    #[cfg_attr(not(any(feature = "etcd", feature = "zookeeper")), allow(dead_code))]
    pub(crate) fn kept(&self) -> Option<String> {
        self.delivered.as_ref().map(|d| match d {
            Some(doc) => format!("the last rules document ({} bytes)", doc.len()),
            None => "no rules document".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Delivered = Arc<Mutex<Vec<Option<String>>>>;

    fn tracker() -> (Tracker, Delivered, Arc<AtomicU64>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let (sink, _stopped) = RulesSink::new(Box::new(move |d| g.lock().unwrap().push(d)));
        let skipped = Arc::new(AtomicU64::new(0));
        (
            Tracker::new("here".into(), sink, skipped.clone()),
            got,
            skipped,
        )
    }

    #[test]
    fn delivers_changes_only_and_skips_bad_documents_once_per_version() {
        let (mut t, got, skipped) = tracker();
        assert_eq!(t.kept(), None);
        t.note(Found::Absent);
        t.deliver();
        t.note(Found::Doc {
            bytes: b"{}",
            version: 1,
        });
        t.deliver();
        t.note(Found::Doc {
            bytes: b"{}",
            version: 2,
        });
        t.deliver();
        let big = vec![b' '; MAX_RULES_BYTES + 1];
        for version in [3, 3, 4] {
            t.note(Found::Doc {
                bytes: &big,
                version,
            });
            t.deliver();
        }
        t.note(Found::Doc {
            bytes: b"\xff",
            version: 5,
        });
        t.note(Found::Bad {
            why: "a FIFO".into(),
            version: 6,
        });
        t.deliver();
        assert_eq!(skipped.load(Ordering::Relaxed), 4, "versions 3, 4, 5 and 6");
        t.note(Found::Absent);
        t.deliver();
        assert_eq!(*got.lock().unwrap(), [None, Some("{}".into()), None]);
        assert_eq!(t.kept().as_deref(), Some("no rules document"));
        let fits = " ".repeat(MAX_RULES_BYTES);
        assert!(check_put(&fits).is_ok());
        assert!(matches!(
            check_put(&(fits + " ")),
            Err(Error::InvalidRules(_))
        ));
    }
}
