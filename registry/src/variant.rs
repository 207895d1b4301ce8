//! The versions and groups of a service one instance serves.
//!
//! Dubbo tells implementations of one interface apart by version and group, and one
//! provider process often exports several (`1.0.0` and `2.0.0`, or groups `blue` and
//! `green`). An instance registers one key per service and address, so the variants it
//! serves travel in its metadata:
//!
//! | metadata | meaning |
//! | --- | --- |
//! | `version`, `group` | the one variant served (absent or empty: none) |
//! | `variants` | several: `group/version` entries joined by `,` (either part may be empty) |
//!
//! With `variants`, `version` and `group` name its first entry, so a consumer that reads
//! only those still reaches that one.

use crate::Instance;

/// Metadata key listing every variant of an instance that serves several.
pub const VARIANTS_META: &str = "variants";

/// One version and group of a service (an empty string: none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    /// Service version, e.g. `1.0.0`.
    pub version: String,
    /// Service group, e.g. `blue`.
    pub group: String,
}

impl Variant {
    /// A variant of `version` and `group`.
    pub fn new(version: impl Into<String>, group: impl Into<String>) -> Self {
        Variant {
            version: version.into(),
            group: group.into(),
        }
    }

    /// Whether a call naming `version` and `group` reaches this variant: each equal, or
    /// `*` (Dubbo's wildcard: any). An empty string names "none", not "any"; so does
    /// version `0.0.0`, which Java sends for none.
    pub fn matches(&self, version: &str, group: &str) -> bool {
        fn none(v: &str) -> &str {
            if v == "0.0.0" {
                ""
            } else {
                v
            }
        }
        (version == "*" || none(&self.version) == none(version))
            && (group == "*" || self.group == group)
    }

    /// Why this variant cannot be listed in metadata: a `,` or `/` in its version or
    /// group would be read back as a separator.
    pub fn check(&self) -> Result<(), String> {
        for (what, s) in [("version", &self.version), ("group", &self.group)] {
            if s.contains([',', '/']) {
                return Err(format!("{what} {s:?} contains ',' or '/'"));
            }
        }
        Ok(())
    }
}

impl Instance {
    /// Records the variants this instance serves (see the [module docs](self)); none
    /// leaves the metadata as it is. Variants are expected to pass [`Variant::check`].
    pub fn with_variants(mut self, variants: &[Variant]) -> Self {
        let Some(first) = variants.first() else {
            return self;
        };
        for (key, value) in [("version", &first.version), ("group", &first.group)] {
            if !value.is_empty() {
                self.meta.insert(key.to_owned(), value.clone());
            }
        }
        if variants.len() > 1 {
            let list: Vec<String> = variants
                .iter()
                .map(|v| format!("{}/{}", v.group, v.version))
                .collect();
            self.meta.insert(VARIANTS_META.to_owned(), list.join(","));
        }
        self
    }

    /// The variants this instance serves, read from its metadata: the `variants` list
    /// when there is one, else the one `version` and `group` (both empty when absent).
    pub fn variants(&self) -> Vec<Variant> {
        let meta = |k: &str| self.meta.get(k).map_or("", String::as_str);
        match self.meta.get(VARIANTS_META) {
            Some(list) => list
                .split(',')
                .map(|entry| {
                    let (group, version) = entry.split_once('/').unwrap_or(("", entry));
                    Variant::new(version, group)
                })
                .collect(),
            None => vec![Variant::new(meta("version"), meta("group"))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_variant_is_plain_version_and_group() {
        let i = Instance::new("a.B", "127.0.0.1:1").with_variants(&[Variant::new("1.0", "")]);
        assert_eq!(i.meta.get("version").map(String::as_str), Some("1.0"));
        assert!(!i.meta.contains_key("group") && !i.meta.contains_key(VARIANTS_META));
        assert_eq!(i.variants(), vec![Variant::new("1.0", "")]);
        let bare = Instance::new("a.B", "127.0.0.1:1");
        assert_eq!(bare.variants(), vec![Variant::default()]);
    }

    #[test]
    fn several_variants_round_trip() {
        let vs = [
            Variant::new("1.0", ""),
            Variant::new("2.0", "blue"),
            Variant::new("", "green"),
        ];
        let i = Instance::new("a.B", "127.0.0.1:1").with_variants(&vs);
        assert_eq!(
            i.meta.get(VARIANTS_META).map(String::as_str),
            Some("/1.0,blue/2.0,green/")
        );
        assert_eq!(i.meta.get("version").map(String::as_str), Some("1.0"));
        assert_eq!(i.variants(), vs);
    }

    #[test]
    fn calls_match_by_version_and_group_with_wildcards_and_java_none() {
        let v = Variant::new("1.0", "blue");
        assert!(v.matches("1.0", "blue"));
        assert!(v.matches("*", "blue") && v.matches("1.0", "*") && v.matches("*", "*"));
        assert!(!v.matches("", "blue") && !v.matches("1.0", "") && !v.matches("2.0", "*"));
        let none = Variant::new("", "");
        assert!(none.matches("", "") && none.matches("0.0.0", ""));
        assert!(Variant::new("0.0.0", "").matches("", ""));
        assert!(!none.matches("1.0", ""));
    }

    #[test]
    fn separators_are_refused() {
        assert!(Variant::new("1,0", "").check().is_err());
        assert!(Variant::new("1.0", "a/b").check().is_err());
        assert!(Variant::new("1.0", "a-b").check().is_ok());
    }
}
