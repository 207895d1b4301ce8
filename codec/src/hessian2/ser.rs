//! hessian2 encoder: free functions for scalars, [`Encoder`] for values that
//! need the class-definition table (objects).
//!
//! Every number takes its most compact form, as Java's `Hessian2Output` does.
//! Characters outside the BMP are written as Java writes them: each UTF-16
//! surrogate as its own 3-byte sequence (CESU-8). Java's `Hessian2Input` and
//! hessian.js (behind sofa-rpc-node) read only that form; a 4-byte UTF-8
//! sequence made sofa-rpc-node drop the connection. Our decoder reads both.

use super::Value;
use std::collections::HashMap;

/// Most UTF-16 units in one string chunk, as Java writes them (Caucho hessian 4 and
/// Dubbo's hessian-lite both cut at 0x8000 units, one less when the cut would
/// split a surrogate pair; a string of exactly 0x8000 units is one `S` chunk).
pub const STRING_CHUNK_UNITS: usize = 0x8000;
/// Bytes per binary chunk.
pub const BINARY_CHUNK_BYTES: usize = 0x7fff;

/// Write `N`.
pub fn write_null(out: &mut Vec<u8>) {
    out.push(b'N');
}

/// Write `T` or `F`.
pub fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { b'T' } else { b'F' });
}

/// Write an int in its shortest form (1, 2, 3 or 5 bytes).
pub fn write_int(out: &mut Vec<u8>, v: i32) {
    match v {
        -16..=47 => out.push((v + 0x90) as u8),
        -2048..=2047 => out.extend_from_slice(&[(0xc8 + (v >> 8)) as u8, v as u8]),
        -262_144..=262_143 => {
            out.extend_from_slice(&[(0xd4 + (v >> 16)) as u8, (v >> 8) as u8, v as u8])
        }
        _ => {
            out.push(b'I');
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// Write a long in its shortest form (1, 2, 3, 5 or 9 bytes).
pub fn write_long(out: &mut Vec<u8>, v: i64) {
    match v {
        -8..=15 => out.push((v + 0xe0) as u8),
        -2048..=2047 => out.extend_from_slice(&[(0xf8 + (v >> 8)) as u8, v as u8]),
        -262_144..=262_143 => {
            out.extend_from_slice(&[(0x3c + (v >> 16)) as u8, (v >> 8) as u8, v as u8])
        }
        _ => match i32::try_from(v) {
            Ok(i) => {
                out.push(0x59);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Err(_) => {
                out.push(b'L');
                out.extend_from_slice(&v.to_be_bytes());
            }
        },
    }
}

/// Write a double in its shortest exact form (`5b`..`5f` or `D`); `-0.0`
/// keeps its sign by taking the 9-byte form.
pub fn write_double(out: &mut Vec<u8>, v: f64) {
    let negative_zero = v == 0.0 && v.is_sign_negative();
    if !negative_zero && v.fract() == 0.0 {
        if v == 0.0 {
            return out.push(0x5b);
        }
        if v == 1.0 {
            return out.push(0x5c);
        }
        if (-128.0..=127.0).contains(&v) {
            return out.extend_from_slice(&[0x5d, v as i8 as u8]);
        }
        if (-32768.0..=32767.0).contains(&v) {
            out.push(0x5e);
            return out.extend_from_slice(&(v as i16).to_be_bytes());
        }
    }
    if !negative_zero && v.is_finite() {
        let mills = (v * 1000.0) as i32;
        if 0.001 * f64::from(mills) == v {
            out.push(0x5f);
            return out.extend_from_slice(&mills.to_be_bytes());
        }
    }
    out.push(b'D');
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

/// Write a date (milliseconds since the epoch); whole minutes take the
/// 5-byte `4b` form.
pub fn write_date(out: &mut Vec<u8>, millis: i64) {
    if millis % 60_000 == 0 {
        if let Ok(m) = i32::try_from(millis / 60_000) {
            out.push(0x4b);
            return out.extend_from_slice(&m.to_be_bytes());
        }
    }
    out.push(0x4a);
    out.extend_from_slice(&millis.to_be_bytes());
}

fn string_chunk_header(out: &mut Vec<u8>, units: usize, last: bool) {
    if !last {
        out.push(b'R');
        out.extend_from_slice(&(units as u16).to_be_bytes());
    } else if units < 32 {
        out.push(units as u8);
    } else if units < 1024 {
        out.extend_from_slice(&[0x30 + (units >> 8) as u8, units as u8]);
    } else {
        out.push(b'S');
        out.extend_from_slice(&(units as u16).to_be_bytes());
    }
}

/// Write a string; lengths count UTF-16 units, strings over
/// [`STRING_CHUNK_UNITS`] units are split into `R` chunks and a final one.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    // Fast path: ASCII bytes are units; one chunk when short enough.
    if s.is_ascii() && s.len() <= STRING_CHUNK_UNITS {
        string_chunk_header(out, s.len(), true);
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let mut rest = s;
    loop {
        // Find the byte end of the next chunk without splitting a character.
        let mut units = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            let w = c.len_utf16();
            if units + w > STRING_CHUNK_UNITS {
                end = i;
                break;
            }
            units += w;
        }
        let last = end == rest.len();
        string_chunk_header(out, units, last);
        let (chunk, tail) = rest.split_at(end);
        put_cesu8(out, chunk);
        if last {
            return;
        }
        rest = tail;
    }
}

/// Appends `s` as CESU-8: UTF-8, except that a character outside the BMP becomes
/// its two UTF-16 surrogates, each written as a 3-byte sequence.
fn put_cesu8(out: &mut Vec<u8>, s: &str) {
    // 4-byte UTF-8 sequences are the only ones starting with 0xf0..=0xf4.
    if !s.bytes().any(|b| b >= 0xf0) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        if c.len_utf8() < 4 {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let mut units = [0u16; 2];
        for &u in c.encode_utf16(&mut units).iter() {
            out.extend_from_slice(&[
                0xe0 | (u >> 12) as u8,
                0x80 | ((u >> 6) & 0x3f) as u8,
                0x80 | (u & 0x3f) as u8,
            ]);
        }
    }
}

/// Write a byte array, in chunks of [`BINARY_CHUNK_BYTES`].
pub fn write_binary(out: &mut Vec<u8>, b: &[u8]) {
    let mut chunks = b.chunks(BINARY_CHUNK_BYTES).peekable();
    if chunks.peek().is_none() {
        return out.push(0x20);
    }
    while let Some(c) = chunks.next() {
        let n = c.len();
        if chunks.peek().is_some() {
            out.push(b'A');
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n < 16 {
            out.push(0x20 + n as u8);
        } else if n < 1024 {
            out.extend_from_slice(&[0x34 + (n >> 8) as u8, n as u8]);
        } else {
            out.push(b'B');
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        out.extend_from_slice(c);
    }
}

/// Begin a list of known length: `0x70..0x7f` up to 7 items, else `V`/`X`.
/// The items follow; no end marker is written for a fixed-length list. The type
/// is written in full; [`Encoder::write_list_begin`] refers to a type written
/// before by its index, as Java does.
pub fn write_list_begin(out: &mut Vec<u8>, len: usize, type_name: Option<&str>) {
    list_begin(out, len, type_name, write_string);
}

fn list_begin(
    out: &mut Vec<u8>,
    len: usize,
    type_name: Option<&str>,
    write_type: impl FnOnce(&mut Vec<u8>, &str),
) {
    let len32 = i32::try_from(len).unwrap_or(i32::MAX);
    match type_name {
        Some(t) if len < 8 => {
            out.push(0x70 + len as u8);
            write_type(out, t);
        }
        Some(t) => {
            out.push(b'V');
            write_type(out, t);
            write_int(out, len32);
        }
        None if len < 8 => out.push(0x78 + len as u8),
        None => {
            out.push(b'X');
            write_int(out, len32);
        }
    }
}

/// Begin a list of unknown length (`U` typed, `W` untyped); finish it with
/// [`write_end`].
pub fn write_list_begin_variable(out: &mut Vec<u8>, type_name: Option<&str>) {
    match type_name {
        Some(t) => {
            out.push(b'U');
            write_string(out, t);
        }
        None => out.push(b'W'),
    }
}

/// Begin a map (`M` typed, `H` untyped); write key, value pairs, then
/// [`write_end`]. [`Encoder::write_map_begin`] refers to a type written before.
pub fn write_map_begin(out: &mut Vec<u8>, type_name: Option<&str>) {
    match type_name {
        Some(t) => {
            out.push(b'M');
            write_string(out, t);
        }
        None => out.push(b'H'),
    }
}

/// Write `Z`, ending a map or a variable-length list.
pub fn write_end(out: &mut Vec<u8>) {
    out.push(b'Z');
}

/// Write `value` with a fresh [`Encoder`].
///
/// Fine for one value; when several values of one stream contain objects use
/// one [`Encoder`] for all, so class indexes stay consistent.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    Encoder::new().write_value(out, value);
}

/// A hessian2 encoder that remembers the class definitions and the list and map
/// types it has written, so each is written in full once per stream (one Dubbo
/// body) and then by its index, as Java's `Hessian2Output` does.
#[derive(Debug, Default, Clone)]
pub struct Encoder {
    /// Class name and field names, by definition index.
    pub classes: Vec<(String, Vec<String>)>,
    /// List and map type names written so far, with their index.
    types: HashMap<String, usize>,
}

impl Encoder {
    /// An encoder with no class or type written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list or map type: its index if written before, else the string
    /// (which takes the next index).
    fn write_type(&mut self, out: &mut Vec<u8>, t: &str) {
        match self.types.get(t) {
            Some(&i) => write_int(out, i32::try_from(i).unwrap_or(i32::MAX)),
            None => {
                write_string(out, t);
                let next = self.types.len();
                self.types.insert(t.to_owned(), next);
            }
        }
    }

    /// Like [`write_list_begin`], a type written before given by its index.
    pub fn write_list_begin(&mut self, out: &mut Vec<u8>, len: usize, type_name: Option<&str>) {
        list_begin(out, len, type_name, |o, t| self.write_type(o, t));
    }

    /// Like [`write_map_begin`], a type written before given by its index.
    pub fn write_map_begin(&mut self, out: &mut Vec<u8>, type_name: Option<&str>) {
        match type_name {
            Some(t) => {
                out.push(b'M');
                self.write_type(out, t);
            }
            None => out.push(b'H'),
        }
    }

    /// Write the object header: the class definition `C` the first time a
    /// (class, fields) pair is seen, then `O`/`0x60..0x6f` with its index.
    /// The field values must follow in the same order.
    pub fn write_object_begin<S: AsRef<str>>(
        &mut self,
        out: &mut Vec<u8>,
        class: &str,
        fields: &[S],
    ) {
        let found = self.classes.iter().position(|(c, f)| {
            c == class
                && f.len() == fields.len()
                && f.iter().zip(fields).all(|(a, b)| a == b.as_ref())
        });
        let idx = match found {
            Some(i) => i,
            None => {
                out.push(b'C');
                write_string(out, class);
                write_int(out, i32::try_from(fields.len()).unwrap_or(i32::MAX));
                for f in fields {
                    write_string(out, f.as_ref());
                }
                self.classes.push((
                    class.to_owned(),
                    fields.iter().map(|f| f.as_ref().to_owned()).collect(),
                ));
                self.classes.len() - 1
            }
        };
        if idx < 16 {
            out.push(0x60 + idx as u8);
        } else {
            out.push(b'O');
            write_int(out, i32::try_from(idx).unwrap_or(i32::MAX));
        }
    }

    /// Write any [`Value`]. Lists take the fixed-length forms; a
    /// [`Value::Ref`] is written as a reference (`0x51`) with its index.
    pub fn write_value(&mut self, out: &mut Vec<u8>, value: &Value) {
        match value {
            Value::Null => write_null(out),
            Value::Bool(b) => write_bool(out, *b),
            Value::Int(i) => write_int(out, *i),
            Value::Long(l) => write_long(out, *l),
            Value::Double(d) => write_double(out, *d),
            Value::Date(d) => write_date(out, *d),
            Value::String(s) => write_string(out, s),
            Value::Binary(b) => write_binary(out, b),
            Value::List { type_name, items } => {
                self.write_list_begin(out, items.len(), type_name.as_deref());
                for it in items {
                    self.write_value(out, it);
                }
            }
            Value::Map { type_name, entries } => {
                self.write_map_begin(out, type_name.as_deref());
                for (k, v) in entries {
                    self.write_value(out, k);
                    self.write_value(out, v);
                }
                write_end(out);
            }
            Value::Object { class, fields } => {
                let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                self.write_object_begin(out, class, &names);
                for (_, v) in fields {
                    self.write_value(out, v);
                }
            }
            Value::Ref(i) => {
                out.push(0x51);
                write_int(out, i32::try_from(*i).unwrap_or(i32::MAX));
            }
        }
    }
}
