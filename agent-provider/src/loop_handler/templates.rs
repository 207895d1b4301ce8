//! Request templates: what every Dubbo request for one method shares
//! ([`RequestTemplate`]: the body's names and the routing attachments), kept for the
//! methods called lately, so that a call copies them rather than encoding eight to ten
//! strings (about 700 instructions, an eighth of the provider-agent's work on a call).

use codec::dubbo::RequestTemplate;

/// Templates in a fixed number of slots: a method takes the slot its caller's hint
/// (call id and connection) picks, and another method with the same slot replaces it.
/// A template is used only for the very names it was made of, so a call id the
/// consumer-agent redefines, or two methods sharing a slot, cost a rebuild, never a
/// wrong request; and memory stays bounded whatever the callers define.
#[derive(Debug, Default)]
pub(super) struct Templates {
    slots: Vec<Option<Entry>>,
}

/// A template and the names it was made of.
#[derive(Debug)]
struct Entry {
    path: String,
    version: Option<String>,
    group: Option<String>,
    method: String,
    descriptor: String,
    template: RequestTemplate,
}

/// The names of a request, as [`codec::dubbo::Request`] has them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Names<'a> {
    pub(super) path: &'a str,
    pub(super) version: Option<&'a str>,
    pub(super) group: Option<&'a str>,
    pub(super) method: &'a str,
    pub(super) descriptor: &'a str,
}

impl Entry {
    fn is(&self, n: &Names<'_>) -> bool {
        self.method == n.method
            && self.path == n.path
            && self.version.as_deref() == n.version
            && self.group.as_deref() == n.group
            && self.descriptor == n.descriptor
    }
}

impl Templates {
    /// Slots kept (templates of about 200 bytes and their names).
    const SLOTS: usize = 256;

    /// The template for `names`, made now unless the slot `hint` picks holds it.
    pub(super) fn get(&mut self, hint: usize, names: &Names<'_>) -> Option<&RequestTemplate> {
        if self.slots.is_empty() {
            self.slots.resize_with(Self::SLOTS, || None);
        }
        let slot = self.slots.get_mut(hint % Self::SLOTS)?;
        if !slot.as_ref().is_some_and(|e| e.is(names)) {
            *slot = Some(Entry {
                path: names.path.to_owned(),
                version: names.version.map(str::to_owned),
                group: names.group.map(str::to_owned),
                method: names.method.to_owned(),
                descriptor: names.descriptor.to_owned(),
                template: RequestTemplate::new(
                    names.path,
                    names.version,
                    names.group,
                    names.method,
                    names.descriptor,
                ),
            });
        }
        slot.as_ref().map(|e| &e.template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(method: &'a str, group: Option<&'a str>) -> Names<'a> {
        Names {
            path: "a.Svc",
            version: Some("1.0"),
            group,
            method,
            descriptor: "I",
        }
    }

    fn encoded(t: Option<&RequestTemplate>) -> Vec<u8> {
        let mut out = Vec::new();
        t.expect("a template")
            .encode(&mut out, 1, true, "2.0.2", b"", &[])
            .expect("encoded");
        out
    }

    #[test]
    fn a_slot_serves_only_the_names_it_was_made_of() {
        let mut t = Templates::default();
        let want = |n: &Names<'_>| {
            let t = RequestTemplate::new(n.path, n.version, n.group, n.method, n.descriptor);
            encoded(Some(&t))
        };
        // Same slot (hint 7), other names: rebuilt each time, always right.
        let (none, some) = (names("m", None), names("m", Some("g")));
        for n in [none, some, names("m", Some("")), names("other", None), none] {
            assert_eq!(encoded(t.get(7, &n)), want(&n));
            assert_eq!(encoded(t.get(7 + Templates::SLOTS, &n)), want(&n));
        }
        assert_eq!(t.slots.len(), Templates::SLOTS);
    }
}
