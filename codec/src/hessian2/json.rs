//! JSON on both sides of hessian2: rendering decoded values for HTTP answers,
//! and encoding typed Dubbo arguments given as JSON.
//!
//! Rendering choices ([`Value::to_json`]):
//! - objects become JSON objects with their class in a leading `"class"`
//!   field (a Java field itself named `class` is kept under `"class$field"`);
//! - binary is base64 (standard alphabet, padded); dates are ISO 8601 UTC
//!   with milliseconds (`1970-01-01T00:00:00.000Z`);
//! - longs stay JSON numbers, exact even beyond 2^53 (serde_json keeps the
//!   digits; a JavaScript reader may round them, so the choice is the exact
//!   text, not a string);
//! - non-finite doubles become the strings `"NaN"`, `"Infinity"`,
//!   `"-Infinity"` (JSON has no such numbers);
//! - maps whose keys are all strings become objects (a repeated key keeps
//!   the last value); other maps become a list of `[key, value]` pairs;
//! - a cycle marker [`Value::Ref`] becomes `{"$ref": index}`.

use super::ser::{self, Encoder};
use super::{Error, Value};
use serde_json::{Map as JsonMap, Number, Value as Json};

impl Value {
    /// Render as JSON for an HTTP answer (see the module docs for choices).
    pub fn to_json(&self) -> Json {
        render(self, Style::Mesh)
    }

    /// Render the way Dubbo's fastjson serialization writes a value: objects
    /// as plain field maps (no class), dates as epoch milliseconds, binary as
    /// base64, non-string map keys as their text.
    pub fn to_fastjson(&self) -> Json {
        render(self, Style::Fastjson)
    }

    /// Plain text for a plain answer: an int or long in decimal, a string as
    /// is, a bool as `true`/`false`, null as `null`, a double as Java prints
    /// it for ordinary magnitudes (`1.0`), a date in ISO 8601, binary in
    /// base64, anything else as compact JSON.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => "null".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Long(l) => l.to_string(),
            Value::Double(d) => format!("{d:?}"),
            Value::Date(d) => iso8601(*d),
            Value::String(s) => s.clone(),
            Value::Binary(b) => base64_encode(b),
            _ => self.to_json().to_string(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Mesh,
    Fastjson,
}

fn double(d: f64) -> Json {
    match Number::from_f64(d) {
        Some(n) => Json::Number(n),
        None if d.is_nan() => Json::String("NaN".into()),
        None if d > 0.0 => Json::String("Infinity".into()),
        None => Json::String("-Infinity".into()),
    }
}

fn render(v: &Value, style: Style) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::Number((*i).into()),
        Value::Long(l) => Json::Number((*l).into()),
        Value::Double(d) => double(*d),
        Value::Date(d) => match style {
            Style::Mesh => Json::String(iso8601(*d)),
            Style::Fastjson => Json::Number((*d).into()),
        },
        Value::String(s) => Json::String(s.clone()),
        Value::Binary(b) => Json::String(base64_encode(b)),
        Value::List { items, .. } => Json::Array(items.iter().map(|i| render(i, style)).collect()),
        Value::Map { entries, .. } => {
            let all_str = entries.iter().all(|(k, _)| matches!(k, Value::String(_)));
            if all_str || style == Style::Fastjson {
                let mut m = JsonMap::with_capacity(entries.len());
                for (k, val) in entries {
                    m.insert(k.to_text(), render(val, style));
                }
                Json::Object(m)
            } else {
                Json::Array(
                    entries
                        .iter()
                        .map(|(k, val)| Json::Array(vec![render(k, style), render(val, style)]))
                        .collect(),
                )
            }
        }
        Value::Object { class, fields } => {
            let mut m = JsonMap::with_capacity(fields.len() + 1);
            if style == Style::Mesh {
                m.insert("class".into(), Json::String(class.clone()));
            }
            for (name, val) in fields {
                let key = if style == Style::Mesh && name == "class" {
                    "class$field".to_owned()
                } else {
                    name.clone()
                };
                m.insert(key, render(val, style));
            }
            Json::Object(m)
        }
        Value::Ref(i) => {
            let mut m = JsonMap::new();
            m.insert("$ref".into(), Json::Number((*i as u64).into()));
            Json::Object(m)
        }
    }
}

/// Format epoch milliseconds as ISO 8601 UTC, e.g. `2018-06-01T12:00:00.000Z`.
pub fn iso8601(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let ms = millis.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if (0..=9999).contains(&y) {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    } else {
        format!("{y:+07}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64 (RFC 4648), for binary values in JSON.
pub fn base64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [
            *c.first().unwrap_or(&0),
            *c.get(1).unwrap_or(&0),
            *c.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(B64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decode standard base64 (padding optional; whitespace not allowed).
///
/// # Errors
/// [`Error::InvalidBase64`] on a character outside the alphabet or a
/// length no encoder produces.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, Error> {
    let t = s.trim_end_matches('=');
    if t.len() % 4 == 1 || s.len() - t.len() > 2 {
        return Err(Error::InvalidBase64);
    }
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in t.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return Err(Error::InvalidBase64),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

/// Infer a hessian2 value from untyped JSON: string -> String, integer ->
/// Int when it fits in 32 bits else Long, other numbers -> Double, array ->
/// untyped list, object -> untyped map with string keys.
pub fn value_from_json(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                i32::try_from(i).map_or(Value::Long(i), Value::Int)
            } else {
                Value::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::List {
            type_name: None,
            items: a.iter().map(value_from_json).collect(),
        },
        Json::Object(o) => Value::Map {
            type_name: None,
            entries: o
                .iter()
                .map(|(k, v)| (Value::String(k.clone()), value_from_json(v)))
                .collect(),
        },
    }
}

/// Whether `s` reads as a qualified Java class name: identifiers joined by dots, at
/// least two (`com.example.User`, `a.B$Inner`).
fn is_class_name(s: &str) -> bool {
    let mut parts = 0;
    for part in s.split('.') {
        let mut chars = part.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
            && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$');
        if !ok {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

/// The class a JSON object names in its `"class"` member, as [`Value::to_json`]
/// renders objects, when that member is a string reading as a Java class name.
fn named_class(o: &JsonMap<String, Json>) -> Option<&str> {
    match o.get("class") {
        Some(Json::String(c)) if is_class_name(c) => Some(c),
        _ => None,
    }
}

/// An object's fields from JSON: every member but the class, with a Java field that
/// [`Value::to_json`] renamed `"class$field"` named `class` again.
fn object_fields(o: &JsonMap<String, Json>) -> impl Iterator<Item = (&str, &Json)> {
    let skip_class = named_class(o).is_some();
    o.iter().filter_map(move |(k, v)| match k.as_str() {
        "class" if skip_class => None,
        "class$field" => Some(("class", v)),
        k => Some((k, v)),
    })
}

/// Infer a hessian2 value from JSON as [`Value::to_json`] renders it, so an answer
/// can be sent back as an argument: like [`value_from_json`], except that an object
/// whose `"class"` member is a string naming a Java class (`com.example.User`)
/// becomes a typed object of that class with the other members as its fields.
pub fn value_from_mesh_json(j: &Json) -> Value {
    match j {
        Json::Array(a) => Value::List {
            type_name: None,
            items: a.iter().map(value_from_mesh_json).collect(),
        },
        Json::Object(o) => match named_class(o) {
            Some(class) => Value::Object {
                class: class.to_owned(),
                fields: object_fields(o)
                    .map(|(k, v)| (k.to_owned(), value_from_mesh_json(v)))
                    .collect(),
            },
            None => Value::Map {
                type_name: None,
                entries: o
                    .iter()
                    .map(|(k, v)| (Value::String(k.clone()), value_from_mesh_json(v)))
                    .collect(),
            },
        },
        other => value_from_json(other),
    }
}

fn kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn mismatch(java_type: &str, expected: &'static str, found: &Json) -> Error {
    Error::TypeMismatch {
        java_type: java_type.to_owned(),
        expected,
        found: kind(found),
    }
}

fn integer(
    java_type: &str,
    j: &Json,
    min: i64,
    max: i64,
    expected: &'static str,
) -> Result<i64, Error> {
    match j.as_i64() {
        Some(i) if (min..=max).contains(&i) => Ok(i),
        _ => Err(mismatch(java_type, expected, j)),
    }
}

/// Encode one Dubbo argument given as JSON, as Java would for `java_type`,
/// with a fresh [`Encoder`] (use [`Encoder::encode_json_arg`] for several
/// arguments of one request so class definitions are shared).
///
/// # Errors
/// [`Error::TypeMismatch`] when the JSON does not fit the Java type.
pub fn encode_json_arg(java_type: &str, arg: &Json, out: &mut Vec<u8>) -> Result<(), Error> {
    Encoder::new().encode_json_arg(java_type, arg, out)
}

/// The hessian2 type name Java gives an array of `elem` (`[string`, `[int`).
fn array_type(elem: &str) -> String {
    let short = match elem {
        "java.lang.String" | "String" => "string",
        "int" | "java.lang.Integer" => "int",
        "long" | "java.lang.Long" => "long",
        "boolean" | "java.lang.Boolean" => "boolean",
        "double" | "java.lang.Double" => "double",
        "float" | "java.lang.Float" => "float",
        "short" | "java.lang.Short" => "short",
        "java.lang.Object" | "Object" => "object",
        other => other,
    };
    format!("[{short}")
}

impl Encoder {
    /// Encode one argument given as JSON as Java would for `java_type`:
    /// `String`, `int`/`Integer`, `long`/`Long`, `boolean`/`Boolean`,
    /// `double`/`Double`, `float`/`Float`, `short`/`Short`, `byte`/`Byte`,
    /// `char`/`Character`, `byte[]` (base64 string or array of numbers),
    /// `T[]` arrays, `java.util.List`/`ArrayList`/`Collection`/`Set`
    /// (untyped list), `java.util.Map`/`HashMap`/`LinkedHashMap` (untyped
    /// map), `java.lang.Object` (inferred), and any other type from a JSON
    /// object as a typed object of that class. JSON `null` is accepted for
    /// every non-primitive type. Objects read back what [`Value::to_json`]
    /// renders: a `"class"` member naming a Java class gives the object's
    /// class (and is no field), also for list items, map values and fields
    /// (see [`value_from_mesh_json`]).
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] naming the Java type, what it needs, and what
    /// the JSON held; [`Error::InvalidBase64`] for a bad `byte[]` string.
    pub fn encode_json_arg(
        &mut self,
        java_type: &str,
        arg: &Json,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let t = java_type.trim();
        let primitive = matches!(
            t,
            "int" | "long" | "boolean" | "double" | "float" | "short" | "byte" | "char"
        );
        if arg.is_null() {
            if primitive {
                return Err(mismatch(t, "a value (primitives cannot be null)", arg));
            }
            ser::write_null(out);
            return Ok(());
        }
        let t_base = t.strip_prefix("java.lang.").unwrap_or(t);
        match t_base {
            "String" | "CharSequence" => match arg {
                Json::String(s) => ser::write_string(out, s),
                _ => return Err(mismatch(t, "a string", arg)),
            },
            "int" | "Integer" => {
                let i = integer(
                    t,
                    arg,
                    i32::MIN.into(),
                    i32::MAX.into(),
                    "an integer in 32-bit range",
                )?;
                ser::write_int(out, i as i32);
            }
            "short" | "Short" => {
                let i = integer(
                    t,
                    arg,
                    i16::MIN.into(),
                    i16::MAX.into(),
                    "an integer in 16-bit range",
                )?;
                ser::write_int(out, i as i32);
            }
            "byte" | "Byte" => {
                let i = integer(
                    t,
                    arg,
                    i8::MIN.into(),
                    i8::MAX.into(),
                    "an integer in 8-bit range",
                )?;
                ser::write_int(out, i as i32);
            }
            "long" | "Long" => {
                let i = integer(t, arg, i64::MIN, i64::MAX, "an integer in 64-bit range")?;
                ser::write_long(out, i);
            }
            "boolean" | "Boolean" => match arg {
                Json::Bool(b) => ser::write_bool(out, *b),
                _ => return Err(mismatch(t, "true or false", arg)),
            },
            "double" | "Double" => match arg.as_f64() {
                Some(d) if arg.is_number() => ser::write_double(out, d),
                _ => return Err(mismatch(t, "a number", arg)),
            },
            "float" | "Float" => match arg.as_f64() {
                Some(d) if arg.is_number() && (d as f32).is_finite() => {
                    ser::write_double(out, f64::from(d as f32))
                }
                _ => return Err(mismatch(t, "a number in float range", arg)),
            },
            "char" | "Character" => match arg {
                Json::String(s) if s.encode_utf16().count() == 1 => ser::write_string(out, s),
                _ => return Err(mismatch(t, "a string of one UTF-16 unit", arg)),
            },
            "byte[]" | "[B" => {
                let bytes = match arg {
                    Json::String(s) => base64_decode(s)?,
                    Json::Array(a) => a
                        .iter()
                        .map(|x| match x.as_i64() {
                            Some(i) if (-128..=255).contains(&i) => Ok(i as u8),
                            _ => Err(mismatch(
                                t,
                                "base64 or an array of numbers in -128..=255",
                                x,
                            )),
                        })
                        .collect::<Result<Vec<u8>, Error>>()?,
                    _ => return Err(mismatch(t, "a base64 string or an array of bytes", arg)),
                };
                ser::write_binary(out, &bytes);
            }
            "java.util.List"
            | "java.util.ArrayList"
            | "java.util.Collection"
            | "java.util.Set"
            | "java.util.HashSet"
            | "java.util.LinkedList" => match arg {
                Json::Array(a) => {
                    ser::write_list_begin(out, a.len(), None);
                    for x in a {
                        self.write_value(out, &value_from_mesh_json(x));
                    }
                }
                _ => return Err(mismatch(t, "an array", arg)),
            },
            "java.util.Map" | "java.util.HashMap" | "java.util.LinkedHashMap" => match arg {
                // A map even when it has a "class" key; its values may be objects.
                Json::Object(o) => self.write_value(
                    out,
                    &Value::Map {
                        type_name: None,
                        entries: o
                            .iter()
                            .map(|(k, v)| (Value::String(k.clone()), value_from_mesh_json(v)))
                            .collect(),
                    },
                ),
                _ => return Err(mismatch(t, "an object", arg)),
            },
            "Object" => self.write_value(out, &value_from_mesh_json(arg)),
            _ => {
                if let Some(elem) = t.strip_suffix("[]") {
                    let Json::Array(a) = arg else {
                        return Err(mismatch(t, "an array", arg));
                    };
                    let ty = array_type(elem);
                    ser::write_list_begin(out, a.len(), Some(&ty));
                    for x in a {
                        self.encode_json_arg(elem, x, out)?;
                    }
                } else {
                    let Json::Object(o) = arg else {
                        return Err(mismatch(t, "an object (its fields)", arg));
                    };
                    // An object rendered by `to_json` names its (runtime) class.
                    let class = named_class(o).unwrap_or(t);
                    let names: Vec<&str> = object_fields(o).map(|(k, _)| k).collect();
                    self.write_object_begin(out, class, &names);
                    for (_, v) in object_fields(o) {
                        self.write_value(out, &value_from_mesh_json(v));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(t: &str, j: &str) -> Value {
        let j: Json = serde_json::from_str(j).expect("json");
        let mut out = Vec::new();
        encode_json_arg(t, &j, &mut out).expect("encode");
        match super::super::decode(&out) {
            Ok(crate::Decoded::Complete { msg, .. }) => msg,
            other => panic!("{other:?}"),
        }
    }

    fn user(name: &str, age: i32) -> Value {
        Value::Object {
            class: "com.example.User".into(),
            fields: vec![
                ("name".into(), Value::String(name.into())),
                ("age".into(), Value::Int(age)),
            ],
        }
    }

    #[test]
    fn rendered_objects_go_back_as_objects() {
        let v = user("a", 1);
        let rendered = v.to_json().to_string();
        assert_eq!(
            rendered,
            r#"{"class":"com.example.User","name":"a","age":1}"#
        );
        assert_eq!(encoded("com.example.User", &rendered), v);
        assert_eq!(encoded("java.lang.Object", &rendered), v);
        assert_eq!(encoded("com.example.User", r#"{"name":"a","age":1}"#), v);
        let list = format!("[{rendered},{rendered}]");
        let Value::List { items, .. } = encoded("java.util.List", &list) else {
            panic!("a list")
        };
        assert_eq!(items, vec![v.clone(), v.clone()]);
        let Value::Map { entries, .. } = encoded(
            "java.util.Map",
            &format!(r#"{{"u":{rendered},"class":"x.Y"}}"#),
        ) else {
            panic!("a map")
        };
        assert_eq!(entries[0], (Value::String("u".into()), v));
        assert_eq!(
            entries[1],
            (Value::String("class".into()), Value::String("x.Y".into()))
        );
        // A Java field named `class`, and "class" values that name no class.
        let odd = Value::Object {
            class: "a.B".into(),
            fields: vec![("class".into(), Value::Int(3))],
        };
        assert_eq!(encoded("a.B", &odd.to_json().to_string()), odd);
        for not_a_class in [
            r#"{"class":"User"}"#,
            r#"{"class":"a..b"}"#,
            r#"{"class":7}"#,
        ] {
            let Value::List { items, .. } = encoded("java.util.List", &format!("[{not_a_class}]"))
            else {
                panic!("a list")
            };
            assert!(matches!(items[0], Value::Map { .. }), "{not_a_class}");
        }
    }
}
