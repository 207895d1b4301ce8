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
//! - a cycle marker [`Value::Ref`] becomes `{"$ref": index}`;
//! - a `java.math.BigDecimal` (Dubbo's form: its `value` text) becomes a JSON
//!   number with exactly Java's `toString()` text (`1.50`, `1E+10`): scale and
//!   every digit kept, as for longs; a `java.math.BigInteger` a JSON number with
//!   all its digits (one longer than about 10,000 digits stays an object);
//! - Caucho's boxes for `Short`, `Byte` and `Float` (objects
//!   `com.caucho.hessian.io.ShortHandle` etc., which plain Caucho hessian writes
//!   where Dubbo's hessian-lite writes an int or double) become their number, a
//!   float with its shortest float text (`1.1`, not `1.100000023841858`);
//! - a `java.util.Set` arrives as a list typed `java.util.HashSet` (or
//!   `LinkedHashSet`, `TreeSet`) and becomes an array, like any list.
//!
//! Reading JSON back where no Java type is declared (list items, map values,
//! object fields, `java.lang.Object`; see [`value_from_mesh_json`]): a string in
//! exactly the rendered date form (`2018-06-01T12:00:00.123Z`) is a date, so a
//! POJO with a `Date` field can be sent back as it came; an object
//! `{"class": "java.math.BigDecimal", "value": "9.99"}` (or `BigInteger`, value
//! a number or string) is that number, since a bare JSON number there is an int,
//! long or double; and `{"class": "java.util.Date", "value": v}` is a date, `v`
//! epoch milliseconds or any ISO 8601 text (a bare number there is a long, any
//! other string a string).

use super::big::{self, BIG_DECIMAL, BIG_INTEGER};
use super::date::{is_rendered_iso8601, parse_iso8601};
use super::ser::{self, Encoder};
use super::{iso8601, Error, Value};
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

/// A big number or one of Caucho's number boxes as a JSON number (see the
/// module docs); `None` for any other object.
fn special_number(class: &str, fields: &[(String, Value)]) -> Option<Json> {
    if let Some(text) = big::big_number_text(class, fields) {
        return text.parse::<Number>().ok().map(Json::Number);
    }
    let [(name, value)] = fields else {
        return None;
    };
    match (class, name.as_str(), value) {
        (
            "com.caucho.hessian.io.ShortHandle" | "com.caucho.hessian.io.ByteHandle",
            "_value",
            Value::Int(i),
        ) => Some(Json::Number((*i).into())),
        ("com.caucho.hessian.io.FloatHandle", "_value", Value::Double(d)) => {
            let f = *d as f32;
            if f.is_finite() {
                f.to_string().parse::<Number>().ok().map(Json::Number)
            } else {
                Some(double(*d))
            }
        }
        _ => None,
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
            if let Some(n) = special_number(class, fields) {
                return n;
            }
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

/// The class a JSON object names in its `"class"` member, as [`Value::to_json`]
/// renders objects, when that member is a string reading as a Java class name.
fn named_class(o: &JsonMap<String, Json>) -> Option<&str> {
    match o.get("class") {
        Some(Json::String(c)) if crate::java::is_class_name(c) => Some(c),
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
/// can be sent back as an argument: like [`value_from_json`], except that
/// - an object whose `"class"` member is a string naming a Java class
///   (`com.example.User`) becomes a typed object of that class with the other
///   members as its fields; for `java.math.BigDecimal` and `java.math.BigInteger`
///   with a `"value"` member (a number or numeric string), that number as Java
///   writes it;
/// - a string in exactly the form dates are rendered in
///   (`2018-06-01T12:00:00.123Z`) becomes a date.
pub fn value_from_mesh_json(j: &Json) -> Value {
    match j {
        Json::Array(a) => Value::List {
            type_name: None,
            items: a.iter().map(value_from_mesh_json).collect(),
        },
        Json::Object(o) => match named_class(o) {
            Some(class) => wrapped_value(class, o).unwrap_or_else(|| Value::Object {
                class: class.to_owned(),
                fields: object_fields(o)
                    .map(|(k, v)| (k.to_owned(), value_from_mesh_json(v)))
                    .collect(),
            }),
            None => Value::Map {
                type_name: None,
                entries: o
                    .iter()
                    .map(|(k, v)| (Value::String(k.clone()), value_from_mesh_json(v)))
                    .collect(),
            },
        },
        Json::String(s) if is_rendered_iso8601(s) => {
            parse_iso8601(s).map_or_else(|| Value::String(s.clone()), Value::Date)
        }
        other => value_from_json(other),
    }
}

/// `{"class": C, "value": v}` where no type is declared, for the classes a bare JSON
/// value cannot name: `java.math.BigDecimal` and `java.math.BigInteger` (`v` a number
/// or string) as that number's wire form, `java.util.Date` (`v` epoch milliseconds or
/// any ISO 8601 text [`parse_iso8601`] reads) as a date. `None` when `value` is not the
/// only other member or does not read as one.
fn wrapped_value(class: &str, o: &JsonMap<String, Json>) -> Option<Value> {
    if o.len() != 2 {
        return None;
    }
    let value = o.get("value")?;
    match class {
        BIG_DECIMAL => Some(big::big_decimal_value(&big::java_decimal_text(
            &number_text(value)?,
        )?)),
        BIG_INTEGER => {
            let (signum, mag) = big::integer_words(&number_text(value)?)?;
            Some(big::big_integer_value(signum, &mag))
        }
        "java.util.Date" => match value {
            Json::Number(n) => n.as_i64().map(Value::Date),
            Json::String(s) => parse_iso8601(s).map(Value::Date),
            _ => None,
        },
        _ => None,
    }
}

/// The text of a JSON number (exactly as sent: serde_json keeps it) or string.
fn number_text(j: &Json) -> Option<String> {
    match j {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn kind(j: &Json) -> &'static str {
    match j {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        // Kept as written (arbitrary precision): 1e999999 is a number no Java type holds.
        Json::Number(n) if n.as_f64().is_some_and(f64::is_finite) => "a number",
        Json::Number(_) => "a number out of range",
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

/// The hessian2 type name Java (Caucho's `ArraySerializer`, `BasicSerializer`) gives
/// an array of `elem`: primitives by their name (`[int`), `String`, `Object` and
/// `Date` by short names (`[string`, `[object`, `[date`), other classes by their
/// full name (`[java.lang.Integer`), nested arrays by nesting (`[[int`).
fn array_type(elem: &str) -> String {
    if let Some(inner) = elem.strip_suffix("[]") {
        return format!("[{}", array_type(inner.trim()));
    }
    let short = match elem {
        "java.lang.String" | "String" => "string",
        "java.lang.Object" | "Object" => "object",
        "java.util.Date" => "date",
        other => other,
    };
    format!("[{short}")
}

/// Whether `s` is a Java identifier in capitals, as enum constants are named by
/// convention (`RED`, `IN_USE`, `V2`).
fn is_constant_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_uppercase() || c == '_' || c == '$')
        && chars.all(|c| c.is_uppercase() || c.is_ascii_digit() || c == '_' || c == '$')
}

/// The list type Java writes for a collection parameter type: `None` (untyped,
/// as for an `ArrayList`) or the class of the collection it builds; `Err` when
/// `t` is no collection type known here.
fn collection_type(t: &str) -> Result<Option<&'static str>, ()> {
    Ok(match t {
        "java.util.List" | "java.util.ArrayList" | "java.util.Collection" => None,
        "java.util.Set" | "java.util.HashSet" => Some("java.util.HashSet"),
        "java.util.LinkedHashSet" => Some("java.util.LinkedHashSet"),
        "java.util.SortedSet" | "java.util.NavigableSet" | "java.util.TreeSet" => {
            Some("java.util.TreeSet")
        }
        "java.util.LinkedList" => Some("java.util.LinkedList"),
        _ => return Err(()),
    })
}

/// The map type Java writes for a map parameter type, like [`collection_type`]:
/// a `HashMap` untyped (`H`), others by their class (`M`).
fn map_type(t: &str) -> Result<Option<&'static str>, ()> {
    Ok(match t {
        "java.util.Map" | "java.util.HashMap" => None,
        "java.util.LinkedHashMap" => Some("java.util.LinkedHashMap"),
        "java.util.SortedMap" | "java.util.NavigableMap" | "java.util.TreeMap" => {
            Some("java.util.TreeMap")
        }
        _ => return Err(()),
    })
}

/// The number a BigDecimal or BigInteger argument holds: a JSON number (its exact
/// text), a string, or `{"class": ..., "value": n}` as for untyped positions.
fn big_arg_text(arg: &Json) -> Option<String> {
    match arg {
        Json::Object(o) => number_text(o.get("value")?),
        other => number_text(other),
    }
}

impl Encoder {
    /// Encode one argument given as JSON as Java would for `java_type`:
    /// - `String`, `int`/`Integer`, `long`/`Long`, `boolean`/`Boolean`,
    ///   `double`/`Double`, `float`/`Float`, `short`/`Short`, `byte`/`Byte`,
    ///   `char`/`Character` from the matching JSON scalar (ranges checked);
    /// - `java.math.BigDecimal` from a number (its exact text) or a numeric
    ///   string, written as Dubbo does (an object with one field, `value`, the
    ///   text Java's `toString()` gives: `1e-7` is sent as `1E-7`, scale kept);
    ///   `java.math.BigInteger` from an integer or a string of digits (at most
    ///   10,000), written as `signum` and `mag` fields;
    /// - `java.util.Date` from epoch milliseconds or an ISO 8601 string
    ///   (`2018-06-01`, `2018-06-01T12:00:00.123Z`, `...+08:00`; no offset is UTC);
    /// - `byte[]` (base64 string or array of numbers), `char[]` (a string),
    ///   `T[]` arrays typed as Java types them (`[int`, `[string`,
    ///   `[java.lang.Integer`);
    /// - `java.util.List`/`ArrayList`/`Collection` (untyped list), `Set`/
    ///   `HashSet`, `LinkedHashSet`, `SortedSet`/`TreeSet`, `LinkedList` (a list
    ///   typed by the class Java would build) from an array;
    /// - `java.util.Map`/`HashMap` (untyped map), `LinkedHashMap`,
    ///   `SortedMap`/`TreeMap` (typed) from an object (string keys) or a
    ///   non-empty array of `[key, value]` pairs (any keys, as non-string-keyed
    ///   maps render);
    /// - `java.lang.Object` (inferred, see [`value_from_mesh_json`]);
    /// - any other type: an enum constant from an object (`{"name": "Red"}`) or
    ///   a string naming it in capitals, Java's convention (`"RED"`, `"IN_USE"`;
    ///   a string such as `"Ann"` is more likely a mistaken POJO, refused), a
    ///   POJO from an object of its fields.
    ///
    /// JSON `null` is accepted for every non-primitive type. Objects read back
    /// what [`Value::to_json`] renders: a `"class"` member naming a Java class
    /// gives the object's class (and is no field), also for list items, map
    /// values and fields, where dates and big numbers are read as
    /// [`value_from_mesh_json`] says.
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
                Some(d) if arg.is_number() && d.is_finite() => ser::write_double(out, d),
                _ => return Err(mismatch(t, "a number in double range", arg)),
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
            "java.math.BigDecimal" => {
                match big_arg_text(arg).and_then(|s| big::java_decimal_text(&s)) {
                    Some(text) => self.write_value(out, &big::big_decimal_value(&text)),
                    None => return Err(mismatch(t, "a decimal number or numeric string", arg)),
                }
            }
            "java.math.BigInteger" => {
                match big_arg_text(arg).and_then(|s| big::integer_words(&s)) {
                    Some((signum, mag)) => {
                        self.write_value(out, &big::big_integer_value(signum, &mag))
                    }
                    None => {
                        return Err(mismatch(
                            t,
                            "an integer or a string of at most 10000 digits",
                            arg,
                        ))
                    }
                }
            }
            "java.util.Date" => {
                let millis = match arg {
                    Json::Number(n) => n.as_i64(),
                    Json::String(s) => parse_iso8601(s),
                    _ => None,
                };
                match millis {
                    Some(ms) => ser::write_date(out, ms),
                    None => {
                        return Err(mismatch(
                            t,
                            "epoch milliseconds or an ISO 8601 date-time",
                            arg,
                        ))
                    }
                }
            }
            "char[]" | "[C" => match arg {
                Json::String(s) => ser::write_string(out, s),
                _ => return Err(mismatch(t, "a string", arg)),
            },
            _ if collection_type(t).is_ok() => match arg {
                Json::Array(a) => {
                    self.write_list_begin(out, a.len(), collection_type(t).unwrap_or(None));
                    for x in a {
                        self.write_value(out, &value_from_mesh_json(x));
                    }
                }
                _ => return Err(mismatch(t, "an array", arg)),
            },
            _ if map_type(t).is_ok() => {
                // A map even when it has a "class" key; its values may be objects.
                let entries = match arg {
                    Json::Object(o) => o
                        .iter()
                        .map(|(k, v)| (Value::String(k.clone()), value_from_mesh_json(v)))
                        .collect(),
                    // An empty map is `{}`; `[]` is more likely a mistaken list.
                    Json::Array(a) if !a.is_empty() => a
                        .iter()
                        .map(|pair| match pair.as_array().map(Vec::as_slice) {
                            Some([k, v]) => Ok((value_from_mesh_json(k), value_from_mesh_json(v))),
                            _ => Err(mismatch(t, "[key, value] pairs", pair)),
                        })
                        .collect::<Result<Vec<_>, Error>>()?,
                    _ => {
                        return Err(mismatch(
                            t,
                            "an object or an array of [key, value] pairs",
                            arg,
                        ))
                    }
                };
                let type_name = map_type(t).unwrap_or(None).map(str::to_owned);
                self.write_value(out, &Value::Map { type_name, entries });
            }
            "Object" => self.write_value(out, &value_from_mesh_json(arg)),
            _ => {
                if let Some(elem) = t.strip_suffix("[]") {
                    let Json::Array(a) = arg else {
                        return Err(mismatch(t, "an array", arg));
                    };
                    let ty = array_type(elem);
                    self.write_list_begin(out, a.len(), Some(&ty));
                    for x in a {
                        self.encode_json_arg(elem, x, out)?;
                    }
                } else if let Some(constant) = arg.as_str().filter(|c| is_constant_name(c)) {
                    // An enum constant: Java writes an object with one field, name.
                    self.write_object_begin(out, t, &["name"]);
                    ser::write_string(out, constant);
                } else {
                    let Json::Object(o) = arg else {
                        return Err(mismatch(
                            t,
                            "an object (its fields) or an enum constant's name in capitals",
                            arg,
                        ));
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
