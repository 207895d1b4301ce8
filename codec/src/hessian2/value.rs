//! The decoded form of one hessian2 value.

/// One hessian2 value, mirroring the kinds of the Hessian 2.0 grammar.
///
/// Decoded output has its references resolved: a back-reference is replaced
/// by a copy of the value it names. Only a reference to a value still being
/// decoded (a cycle, such as a Java exception whose `cause` is itself) stays
/// as [`Value::Ref`], so a tree never has to be infinite.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `N`: Java `null`.
    Null,
    /// `T` / `F`.
    Bool(bool),
    /// A 32-bit int (Java `int`, also `short` and `byte`).
    Int(i32),
    /// A 64-bit long.
    Long(i64),
    /// A 64-bit IEEE double (Java `float` travels as a double).
    Double(f64),
    /// A `java.util.Date`: milliseconds since the Unix epoch, UTC.
    Date(i64),
    /// A string (chunks joined, surrogate pairs combined).
    String(String),
    /// A byte array (chunks joined).
    Binary(Vec<u8>),
    /// A list or Java array, with its type name when the wire gave one.
    List {
        /// The type, e.g. `[java.lang.StackTraceElement`; `None` when untyped.
        type_name: Option<String>,
        /// The elements, in wire order.
        items: Vec<Value>,
    },
    /// A map, entries kept in wire order (keys may be any value).
    Map {
        /// The type, e.g. `java.util.HashMap`; `None` for an untyped `H` map.
        type_name: Option<String>,
        /// The entries, in wire order; duplicates are kept as sent.
        entries: Vec<(Value, Value)>,
    },
    /// A typed object: its class name and its fields in definition order.
    Object {
        /// The Java class name, e.g. `java.lang.RuntimeException`.
        class: String,
        /// Field name and value pairs, in class-definition order.
        fields: Vec<(String, Value)>,
    },
    /// A back-reference (index in the reference table) left in place only
    /// where resolving it would recur forever: the marker of a cycle.
    Ref(usize),
}

impl Value {
    /// The string inside a [`Value::String`], if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The field `name` of a [`Value::Object`], or the entry with the string
    /// key `name` of a [`Value::Map`]; handy for exceptions and attachments.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object { fields, .. } => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            Value::Map { entries, .. } => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// How many nodes this value holds (itself included); the decoder uses
    /// it to bound the work copies of referenced values can cause.
    pub fn node_count(&self) -> usize {
        match self {
            Value::List { items, .. } => 1 + items.iter().map(Value::node_count).sum::<usize>(),
            Value::Map { entries, .. } => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.node_count() + v.node_count())
                    .sum::<usize>()
            }
            Value::Object { fields, .. } => {
                1 + fields.iter().map(|(_, v)| v.node_count()).sum::<usize>()
            }
            _ => 1,
        }
    }
}

/// Find the message of a Java `Throwable` without knowing its class.
///
/// Looks for a string `detailMessage` field (Java's field name); when it is
/// null or absent, follows `cause` (skipping a self-reference) and tries
/// again. Also accepts a map with `detailMessage` or `message` (how fastjson
/// renders an exception). Returns `None` when no message is found.
pub fn exception_message(v: &Value) -> Option<String> {
    let mut cur = v;
    for _ in 0..super::MAX_DEPTH {
        for key in ["detailMessage", "message", "localizedMessage"] {
            if let Some(Value::String(s)) = cur.get(key) {
                return Some(s.clone());
            }
        }
        match cur.get("cause") {
            Some(next @ (Value::Object { .. } | Value::Map { .. })) => cur = next,
            _ => return None,
        }
    }
    None
}

/// Causes an [`exception_summary`] follows at most; a deeper chain is cut there.
pub const MAX_CAUSES: usize = 8;

/// What an HTTP caller needs of a Java `Throwable`: a map of its `class` (absent when
/// unknown), its own `message` (null when it has none) and its `cause` (the same shape;
/// absent when there is none), outermost first.
///
/// The class is an object's class, or a fastjson map's `@type`. A `cause` that is the
/// exception itself (how Java says "no cause"; decoded as a cycle marker) ends the chain,
/// as does anything that is not an object or map, and the [`MAX_CAUSES`]th cause.
///
/// ```
/// use codec::hessian2::{exception_summary, Value};
///
/// let object = |class: &str, message: &str, cause: Value| Value::Object {
///     class: class.into(),
///     fields: vec![
///         ("detailMessage".into(), Value::String(message.into())),
///         ("cause".into(), cause),
///     ],
/// };
/// let thrown = object(
///     "com.example.NoUser",
///     "no user 7",
///     object("java.io.IOException", "disk gone", Value::Ref(1)),
/// );
/// let summary = exception_summary(&thrown);
/// assert_eq!(
///     summary.to_json().to_string(),
///     r#"{"class":"com.example.NoUser","message":"no user 7","cause":{"class":"java.io.IOException","message":"disk gone"}}"#
/// );
/// ```
pub fn exception_summary(v: &Value) -> Value {
    let mut chain = vec![v];
    while let Some(next @ (Value::Object { .. } | Value::Map { .. })) = chain
        .last()
        .and_then(|last| last.get("cause"))
        .filter(|_| chain.len() <= MAX_CAUSES)
    {
        chain.push(next);
    }
    let key = |k: &str| Value::String(k.to_owned());
    chain.iter().rev().fold(Value::Null, |cause, level| {
        let class = match level {
            Value::Object { class, .. } => Some(class.as_str()),
            _ => level.get("@type").and_then(Value::as_str),
        };
        let message = ["detailMessage", "message", "localizedMessage"]
            .iter()
            .find_map(|k| match level.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            });
        let mut entries = Vec::with_capacity(3);
        if let Some(c) = class {
            entries.push((key("class"), key(c)));
        }
        entries.push((key("message"), message.map_or(Value::Null, Value::String)));
        if cause != Value::Null {
            entries.push((key("cause"), cause));
        }
        Value::Map {
            type_name: None,
            entries,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Value)]) -> Value {
        Value::Map {
            type_name: None,
            entries: entries
                .iter()
                .map(|(k, v)| (Value::String((*k).into()), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn fastjson_exception_maps_are_summarised() {
        let cause = map(&[("message", Value::String("inner".into()))]);
        let thrown = map(&[
            ("@type", Value::String("com.example.Bad".into())),
            ("message", Value::String("outer".into())),
            ("cause", cause),
        ]);
        assert_eq!(
            exception_summary(&thrown).to_json().to_string(),
            r#"{"class":"com.example.Bad","message":"outer","cause":{"message":"inner"}}"#
        );
        assert_eq!(
            exception_summary(&Value::String("x".into()))
                .to_json()
                .to_string(),
            r#"{"message":null}"#
        );
    }

    #[test]
    fn a_long_cause_chain_is_cut() {
        let mut v = map(&[("message", Value::String("root".into()))]);
        for i in 0..100 {
            v = map(&[("message", Value::String(i.to_string())), ("cause", v)]);
        }
        let mut levels = 0;
        let summary = exception_summary(&v);
        let mut cur = Some(&summary);
        while let Some(l) = cur {
            levels += 1;
            cur = l.get("cause");
        }
        assert_eq!(levels, MAX_CAUSES + 1);
    }
}
