//! Incremental hessian2 decoder.
//!
//! Tag decoding ([`Decoder::value`]'s one `match`) is kept apart from payload
//! readers (`string_body`, `binary_body`, `list_body`, ...). Every length is
//! checked against a named limit and against the bytes present before it
//! sizes an allocation; nesting is bounded by [`MAX_DEPTH`].

use super::{Error, Value, MAX_COLLECTION_LEN, MAX_DEPTH, MAX_FIELDS, MAX_NODES};
use crate::Decoded;

/// Why an internal step stopped: more input needed, or a real error.
enum Stop {
    Incomplete,
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Fail(e)
    }
}

type Step<T> = Result<T, Stop>;

/// A cursor over the input; every read reports `Incomplete` at the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn peek(&self) -> Step<u8> {
        self.buf.get(self.pos).copied().ok_or(Stop::Incomplete)
    }

    fn u8(&mut self) -> Step<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Stop::Incomplete)?;
        let s = self.buf.get(self.pos..end).ok_or(Stop::Incomplete)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u16(&mut self) -> Step<usize> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }
}

/// One class definition: the class name and its field names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClassDef {
    name: String,
    fields: Vec<String>,
}

/// A hessian2 decoder that keeps the class-definition, type and reference
/// tables across the several values of one Dubbo body (Java's `Hessian2Input`
/// shares them for a whole stream).
///
/// On `Incomplete` or an error, the tables are rolled back to what they were
/// before the call, so the same bytes can be offered again with more.
///
/// Resolved references are bounded too: a copy may not make the tree deeper
/// than [`MAX_DEPTH`], and the copies kept in the reference table plus the
/// copies made by resolving references over the decoder's whole life are
/// bounded by [`MAX_NODES`], so a few bytes of references can neither nest
/// values without limit nor fill memory, in one value or across the values
/// of one body.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    classes: Vec<ClassDef>,
    types: Vec<String>,
    /// `None` while the value is being decoded (a reference to it is a cycle).
    refs: Vec<Option<RefEntry>>,
    /// Nodes produced in the current call, bounded by [`MAX_NODES`].
    nodes: usize,
    /// Nodes copied into the reference table or out of it by resolving a
    /// reference, over all calls; bounded by [`MAX_NODES`].
    copied: usize,
    /// Set by [`Decoder::for_body`] when no reference can follow: containers are
    /// then not copied into the reference table.
    no_refs_ahead: bool,
}

/// A finished value in the reference table, with its size and height.
#[derive(Debug, Clone)]
struct RefEntry {
    value: Value,
    nodes: usize,
    height: usize,
}

/// Nodes in `v` (itself included) and its height (1 for a scalar).
fn measure(v: &Value) -> (usize, usize) {
    let mut nodes = 1;
    let mut height = 0;
    let mut add = |c: &Value| {
        let (n, h) = measure(c);
        nodes += n;
        height = height.max(h);
    };
    match v {
        Value::List { items, .. } => items.iter().for_each(&mut add),
        Value::Map { entries, .. } => entries.iter().for_each(|(k, v)| {
            add(k);
            add(v);
        }),
        Value::Object { fields, .. } => fields.iter().for_each(|(_, v)| add(v)),
        _ => {}
    }
    (nodes, height + 1)
}

impl Decoder {
    /// A decoder with empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder for `body`, all the input it will be given (a message body, read
    /// value after value). When no byte of it is the reference tag (`0x51`), nothing
    /// can refer back to the lists, maps and objects decoded, so they are not copied
    /// into the reference table: a Dubbo response's attachment map, say, costs half
    /// as much to decode.
    pub fn for_body(body: &[u8]) -> Self {
        Decoder {
            no_refs_ahead: !body.contains(&0x51),
            ..Self::default()
        }
    }

    /// Decode the next value at the start of `buf`.
    ///
    /// Returns `Incomplete` when `buf` ends inside the value; the tables are
    /// then left as they were.
    ///
    /// # Errors
    /// A tag that cannot start a value there, bad UTF-8, a dangling class,
    /// type or reference index, or a limit exceeded.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded<Value>, Error> {
        let saved = (self.classes.len(), self.types.len(), self.refs.len());
        let copied = self.copied;
        self.nodes = 0;
        let mut r = Reader { buf, pos: 0 };
        let res = self.value(&mut r, 0);
        let rollback = |d: &mut Self| {
            d.classes.truncate(saved.0);
            d.types.truncate(saved.1);
            d.refs.truncate(saved.2);
            d.copied = copied;
        };
        match res {
            Ok(msg) => Ok(Decoded::Complete {
                msg,
                consumed: r.pos,
            }),
            Err(Stop::Incomplete) => {
                rollback(self);
                Ok(Decoded::Incomplete)
            }
            Err(Stop::Fail(e)) => {
                rollback(self);
                Err(e)
            }
        }
    }

    /// Charge `n` copied nodes to the decoder's lifetime budget.
    fn charge_copy(&mut self, n: usize) -> Step<()> {
        self.copied = self.copied.saturating_add(n);
        if self.copied > MAX_NODES {
            return Err(Error::TooManyNodes { max: MAX_NODES }.into());
        }
        Ok(())
    }

    fn bump(&mut self, n: usize) -> Step<()> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(Error::TooManyNodes { max: MAX_NODES }.into());
        }
        Ok(())
    }

    fn value(&mut self, r: &mut Reader<'_>, depth: usize) -> Step<Value> {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep { max: MAX_DEPTH }.into());
        }
        self.bump(1)?;
        // Class definitions may precede any value: read them in a loop, not
        // by recursion, so a run of them cannot grow the stack.
        let mut at = r.pos;
        let mut tag = r.u8()?;
        while tag == b'C' {
            self.class_def(r)?;
            at = r.pos;
            tag = r.u8()?;
        }
        let v = match tag {
            b'N' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => Value::Int(int_body(tag, r)?),
            0xd8..=0xef | 0xf0..=0xff | 0x38..=0x3f | 0x59 | b'L' => {
                Value::Long(long_body(tag, r)?)
            }
            0x5b..=0x5f | b'D' => Value::Double(double_body(tag, r)?),
            0x4a => Value::Date(i64::from_be_bytes(r.array()?)),
            0x4b => Value::Date(i64::from(i32::from_be_bytes(r.array()?)) * 60_000),
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => Value::String(string_body(tag, at, r)?),
            0x20..=0x2f | 0x34..=0x37 | b'B' | b'A' => Value::Binary(binary_body(tag, at, r)?),
            b'U' => {
                let t = self.type_name(r)?;
                self.list(r, depth, Some(t), None)?
            }
            b'V' => {
                let t = self.type_name(r)?;
                let n = length(read_int(r)?, "list", r)?;
                self.list(r, depth, Some(t), Some(n))?
            }
            b'W' => self.list(r, depth, None, None)?,
            b'X' => {
                let n = length(read_int(r)?, "list", r)?;
                self.list(r, depth, None, Some(n))?
            }
            0x70..=0x77 => {
                let t = self.type_name(r)?;
                self.list(r, depth, Some(t), Some(usize::from(tag - 0x70)))?
            }
            0x78..=0x7f => self.list(r, depth, None, Some(usize::from(tag - 0x78)))?,
            b'M' => {
                let t = self.type_name(r)?;
                self.map(r, depth, Some(t))?
            }
            b'H' => self.map(r, depth, None)?,
            b'O' => {
                let idx = read_int(r)?;
                self.object(r, depth, i64::from(idx))?
            }
            0x60..=0x6f => self.object(r, depth, i64::from(tag - 0x60))?,
            0x51 => {
                let idx = read_int(r)?;
                self.reference(i64::from(idx), depth)?
            }
            _ => {
                return Err(Error::UnexpectedTag {
                    tag,
                    offset: at,
                    expected: "a value",
                }
                .into())
            }
        };
        Ok(v)
    }

    fn class_def(&mut self, r: &mut Reader<'_>) -> Step<()> {
        let name = read_string(r)?;
        let n = read_int(r)?;
        if n < 0 || n as usize > MAX_FIELDS {
            return Err(Error::TooLong {
                what: "class field count",
                len: i64::from(n),
                max: MAX_FIELDS,
            }
            .into());
        }
        let n = n as usize;
        if n > r.remaining() {
            return Err(Stop::Incomplete);
        }
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(read_string(r)?);
        }
        self.classes.push(ClassDef { name, fields });
        Ok(())
    }

    /// A list, map or object type: a string (added to the type table) or an
    /// int index into that table.
    fn type_name(&mut self, r: &mut Reader<'_>) -> Step<String> {
        let at = r.pos;
        let tag = r.u8()?;
        match tag {
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => {
                let s = string_body(tag, at, r)?;
                self.types.push(s.clone());
                Ok(s)
            }
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => {
                let i = int_body(tag, r)?;
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.types.get(i))
                    .cloned()
                    .ok_or_else(|| {
                        Error::UnknownType {
                            index: i64::from(i),
                        }
                        .into()
                    })
            }
            _ => Err(Error::UnexpectedTag {
                tag,
                offset: at,
                expected: "a type name",
            }
            .into()),
        }
    }

    fn new_ref(&mut self) -> usize {
        self.refs.push(None);
        self.refs.len() - 1
    }

    fn fill_ref(&mut self, slot: usize, v: &Value) -> Step<()> {
        if self.no_refs_ahead {
            // No reference follows: the slot keeps its place, never read.
            return Ok(());
        }
        let (nodes, height) = measure(v);
        // Charge the copy kept in the table before making it.
        self.charge_copy(nodes)?;
        if let Some(s) = self.refs.get_mut(slot) {
            *s = Some(RefEntry {
                value: v.clone(),
                nodes,
                height,
            });
        }
        Ok(())
    }

    /// Resolve reference `idx` met at nesting `depth`: a copy of the value,
    /// or [`Value::Ref`] for a value still being decoded (a cycle).
    fn reference(&mut self, idx: i64, depth: usize) -> Step<Value> {
        let entry = usize::try_from(idx)
            .ok()
            .and_then(|i| self.refs.get(i).map(|e| (i, e)));
        match entry {
            None => Err(Error::UnknownRef { index: idx }.into()),
            Some((i, None)) => Ok(Value::Ref(i)),
            Some((i, Some(e))) => {
                let (nodes, height) = (e.nodes, e.height);
                // The copy takes the reference's place at `depth`: the tree
                // must stay within MAX_DEPTH, as if it had been sent inline.
                if depth + height > MAX_DEPTH {
                    return Err(Error::TooDeep { max: MAX_DEPTH }.into());
                }
                // Charge the copy to the budgets before making it.
                self.bump(nodes)?;
                self.charge_copy(nodes)?;
                match self.refs.get(i) {
                    Some(Some(e)) => Ok(e.value.clone()),
                    _ => Err(Error::UnknownRef { index: idx }.into()),
                }
            }
        }
    }

    fn list(
        &mut self,
        r: &mut Reader<'_>,
        depth: usize,
        type_name: Option<String>,
        len: Option<usize>,
    ) -> Step<Value> {
        let slot = self.new_ref();
        let mut items = Vec::with_capacity(len.unwrap_or(0));
        match len {
            Some(n) => {
                for _ in 0..n {
                    items.push(self.value(r, depth + 1)?);
                }
            }
            None => {
                while r.peek()? != b'Z' {
                    if items.len() >= MAX_COLLECTION_LEN {
                        return Err(too_long("list", items.len()));
                    }
                    items.push(self.value(r, depth + 1)?);
                }
                r.pos += 1;
            }
        }
        let v = Value::List { type_name, items };
        self.fill_ref(slot, &v)?;
        Ok(v)
    }

    fn map(&mut self, r: &mut Reader<'_>, depth: usize, type_name: Option<String>) -> Step<Value> {
        let slot = self.new_ref();
        let mut entries = Vec::new();
        while r.peek()? != b'Z' {
            if entries.len() >= MAX_COLLECTION_LEN {
                return Err(too_long("map", entries.len()));
            }
            let k = self.value(r, depth + 1)?;
            let v = self.value(r, depth + 1)?;
            entries.push((k, v));
        }
        r.pos += 1;
        let v = Value::Map { type_name, entries };
        self.fill_ref(slot, &v)?;
        Ok(v)
    }

    fn object(&mut self, r: &mut Reader<'_>, depth: usize, idx: i64) -> Step<Value> {
        let def = usize::try_from(idx)
            .ok()
            .and_then(|i| self.classes.get(i))
            .cloned()
            .ok_or(Error::UnknownClass { index: idx })?;
        let slot = self.new_ref();
        let mut fields = Vec::with_capacity(def.fields.len());
        for name in def.fields {
            let v = self.value(r, depth + 1)?;
            fields.push((name, v));
        }
        let v = Value::Object {
            class: def.name,
            fields,
        };
        self.fill_ref(slot, &v)?;
        Ok(v)
    }
}

fn too_long(what: &'static str, len: usize) -> Stop {
    Error::TooLong {
        what,
        len: i64::try_from(len).unwrap_or(i64::MAX),
        max: MAX_COLLECTION_LEN,
    }
    .into()
}

/// Check a wire length: negative or above the limit is an error; more than
/// the bytes left (each element takes at least one) means more input.
fn length(n: i32, what: &'static str, r: &Reader<'_>) -> Step<usize> {
    let len = usize::try_from(n).map_err(|_| Error::NegativeLength {
        what,
        len: i64::from(n),
    })?;
    if len > MAX_COLLECTION_LEN {
        return Err(too_long(what, len));
    }
    if len > r.remaining() {
        return Err(Stop::Incomplete);
    }
    Ok(len)
}

fn int_body(tag: u8, r: &mut Reader<'_>) -> Step<i32> {
    let t = i32::from(tag);
    Ok(match tag {
        0x80..=0xbf => t - 0x90,
        0xc0..=0xcf => ((t - 0xc8) << 8) | i32::from(r.u8()?),
        0xd0..=0xd7 => {
            let [b1, b2] = r.array()?;
            ((t - 0xd4) << 16) | (i32::from(b1) << 8) | i32::from(b2)
        }
        _ => i32::from_be_bytes(r.array()?),
    })
}

fn long_body(tag: u8, r: &mut Reader<'_>) -> Step<i64> {
    let t = i64::from(tag);
    Ok(match tag {
        0xd8..=0xef => t - 0xe0,
        0xf0..=0xff => ((t - 0xf8) << 8) | i64::from(r.u8()?),
        0x38..=0x3f => {
            let [b1, b2] = r.array()?;
            ((t - 0x3c) << 16) | (i64::from(b1) << 8) | i64::from(b2)
        }
        0x59 => i64::from(i32::from_be_bytes(r.array()?)),
        _ => i64::from_be_bytes(r.array()?),
    })
}

fn double_body(tag: u8, r: &mut Reader<'_>) -> Step<f64> {
    Ok(match tag {
        0x5b => 0.0,
        0x5c => 1.0,
        0x5d => f64::from(i8::from_be_bytes(r.array()?)),
        0x5e => f64::from(i16::from_be_bytes(r.array()?)),
        0x5f => 0.001 * f64::from(i32::from_be_bytes(r.array()?)),
        _ => f64::from_be_bytes(r.array()?),
    })
}

/// An int where the grammar requires one (lengths, indexes, field counts).
fn read_int(r: &mut Reader<'_>) -> Step<i32> {
    let at = r.pos;
    let tag = r.u8()?;
    match tag {
        0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => int_body(tag, r),
        _ => Err(Error::UnexpectedTag {
            tag,
            offset: at,
            expected: "an int",
        }
        .into()),
    }
}

/// A string where the grammar requires one (class and field names).
fn read_string(r: &mut Reader<'_>) -> Step<String> {
    let at = r.pos;
    let tag = r.u8()?;
    string_body(tag, at, r)
}

/// The length (in UTF-16 units) and finality of a string chunk.
fn string_chunk(tag: u8, at: usize, r: &mut Reader<'_>) -> Step<(usize, bool)> {
    Ok(match tag {
        0x00..=0x1f => (usize::from(tag), true),
        0x30..=0x33 => ((usize::from(tag - 0x30) << 8) | usize::from(r.u8()?), true),
        b'S' => (r.u16()?, true),
        b'R' => (r.u16()?, false),
        _ => {
            return Err(Error::UnexpectedTag {
                tag,
                offset: at,
                expected: "a string",
            }
            .into())
        }
    })
}

fn string_body(tag: u8, at: usize, r: &mut Reader<'_>) -> Step<String> {
    let (mut units, mut last) = string_chunk(tag, at, r)?;
    let mut out = String::new();
    // A high surrogate waiting for its low half (possibly in the next chunk).
    let mut high: Option<u16> = None;
    loop {
        if units > r.remaining() {
            return Err(Stop::Incomplete);
        }
        out.reserve(units);
        // Fast path: an all-ASCII chunk is copied as is.
        let ascii = r
            .buf
            .get(r.pos..r.pos + units)
            .is_some_and(|s| s.is_ascii());
        if ascii && high.is_none() {
            let s = r.take(units)?;
            out.push_str(std::str::from_utf8(s).unwrap_or_default());
            units = 0;
        }
        while units > 0 {
            let start = r.pos;
            let b0 = r.u8()?;
            let bad = || Stop::Fail(Error::InvalidUtf8 { offset: start });
            let cont = |r: &mut Reader<'_>| -> Step<u32> {
                let b = r.u8()?;
                if b & 0xc0 != 0x80 {
                    return Err(Stop::Fail(Error::InvalidUtf8 { offset: start }));
                }
                Ok(u32::from(b & 0x3f))
            };
            let (cp, width) = match b0 {
                0x00..=0x7f => (u32::from(b0), 1),
                0xc0..=0xdf => ((u32::from(b0 & 0x1f) << 6) | cont(r)?, 1),
                0xe0..=0xef => {
                    let c1 = cont(r)?;
                    let c2 = cont(r)?;
                    ((u32::from(b0 & 0x0f) << 12) | (c1 << 6) | c2, 1)
                }
                0xf0..=0xf7 => {
                    let c1 = cont(r)?;
                    let c2 = cont(r)?;
                    let c3 = cont(r)?;
                    let cp = (u32::from(b0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3;
                    if !(0x1_0000..=0x10_ffff).contains(&cp) || units < 2 {
                        return Err(bad());
                    }
                    (cp, 2)
                }
                _ => return Err(bad()),
            };
            units -= width;
            match cp {
                0xd800..=0xdbff => {
                    if high.take().is_some() {
                        out.push(char::REPLACEMENT_CHARACTER);
                    }
                    high = u16::try_from(cp).ok();
                }
                0xdc00..=0xdfff => match high.take() {
                    Some(h) => {
                        let c = 0x1_0000 + ((u32::from(h) - 0xd800) << 10) + (cp - 0xdc00);
                        out.push(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
                    }
                    None => out.push(char::REPLACEMENT_CHARACTER),
                },
                _ => {
                    if high.take().is_some() {
                        out.push(char::REPLACEMENT_CHARACTER);
                    }
                    out.push(char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
            }
        }
        if last {
            break;
        }
        let at = r.pos;
        let tag = r.u8()?;
        (units, last) = string_chunk(tag, at, r)?;
    }
    if high.is_some() {
        out.push(char::REPLACEMENT_CHARACTER);
    }
    Ok(out)
}

/// The length and finality of a binary chunk.
fn binary_chunk(tag: u8, at: usize, r: &mut Reader<'_>) -> Step<(usize, bool)> {
    Ok(match tag {
        0x20..=0x2f => (usize::from(tag - 0x20), true),
        0x34..=0x37 => ((usize::from(tag - 0x34) << 8) | usize::from(r.u8()?), true),
        b'B' => (r.u16()?, true),
        b'A' => (r.u16()?, false),
        _ => {
            return Err(Error::UnexpectedTag {
                tag,
                offset: at,
                expected: "a binary chunk",
            }
            .into())
        }
    })
}

fn binary_body(tag: u8, at: usize, r: &mut Reader<'_>) -> Step<Vec<u8>> {
    let mut out = Vec::new();
    let (mut tag, mut at) = (tag, at);
    loop {
        let (len, last) = binary_chunk(tag, at, r)?;
        out.extend_from_slice(r.take(len)?);
        if last {
            return Ok(out);
        }
        at = r.pos;
        tag = r.u8()?;
    }
}

/// Walks hessian2 values without building them: where each value ends, for a proxy
/// that forwards values as the bytes they came in. It keeps what later values may
/// refer to (class definitions' field counts, the numbers of types and of referable
/// values) and the decoder's limits on nesting and size, so where [`Decoder`] reads a
/// whole value the skipper finds the same end (it is laxer only on the node budget,
/// which the decoder also spends on copies of referenced values). It allocates only
/// for class definitions.
#[derive(Debug, Default, Clone)]
pub struct Skipper {
    /// Field count of each class definition met.
    classes: Vec<usize>,
    /// Types met (for type references).
    types: usize,
    /// Lists, maps and objects met (for value references).
    refs: usize,
    /// Values walked in the current call, bounded by [`MAX_NODES`].
    nodes: usize,
}

impl Skipper {
    /// A skipper with empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Walks the value at the start of `buf`: `Complete` with the bytes it takes.
    ///
    /// # Errors
    /// As [`Decoder::decode`] for the same bytes.
    pub fn skip(&mut self, buf: &[u8]) -> Result<Decoded<()>, Error> {
        let saved = (self.classes.len(), self.types, self.refs);
        self.nodes = 0;
        let mut r = Reader { buf, pos: 0 };
        let res = self.value(&mut r, 0);
        match res {
            Ok(()) => Ok(Decoded::Complete {
                msg: (),
                consumed: r.pos,
            }),
            Err(stop) => {
                self.classes.truncate(saved.0);
                self.types = saved.1;
                self.refs = saved.2;
                match stop {
                    Stop::Incomplete => Ok(Decoded::Incomplete),
                    Stop::Fail(e) => Err(e),
                }
            }
        }
    }

    fn value(&mut self, r: &mut Reader<'_>, depth: usize) -> Step<()> {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep { max: MAX_DEPTH }.into());
        }
        self.nodes = self.nodes.saturating_add(1);
        if self.nodes > MAX_NODES {
            return Err(Error::TooManyNodes { max: MAX_NODES }.into());
        }
        let mut at = r.pos;
        let mut tag = r.u8()?;
        while tag == b'C' {
            skip_string(r)?;
            let n = read_int(r)?;
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_FIELDS)
                .ok_or(Error::TooLong {
                    what: "class field count",
                    len: i64::from(n),
                    max: MAX_FIELDS,
                })?;
            for _ in 0..n {
                skip_string(r)?;
            }
            self.classes.push(n);
            at = r.pos;
            tag = r.u8()?;
        }
        match tag {
            b'N' | b'T' | b'F' => {}
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => {
                int_body(tag, r)?;
            }
            0xd8..=0xef | 0xf0..=0xff | 0x38..=0x3f | 0x59 | b'L' => {
                long_body(tag, r)?;
            }
            0x5b..=0x5f | b'D' => {
                double_body(tag, r)?;
            }
            0x4a => {
                r.array::<8>()?;
            }
            0x4b => {
                r.array::<4>()?;
            }
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => skip_string_body(tag, at, r)?,
            0x20..=0x2f | 0x34..=0x37 | b'B' | b'A' => skip_binary_body(tag, at, r)?,
            b'U' => {
                self.type_name(r)?;
                self.items(r, depth, None)?;
            }
            b'V' => {
                self.type_name(r)?;
                let n = length(read_int(r)?, "list", r)?;
                self.items(r, depth, Some(n))?;
            }
            b'W' => self.items(r, depth, None)?,
            b'X' => {
                let n = length(read_int(r)?, "list", r)?;
                self.items(r, depth, Some(n))?;
            }
            0x70..=0x77 => {
                self.type_name(r)?;
                self.items(r, depth, Some(usize::from(tag - 0x70)))?;
            }
            0x78..=0x7f => self.items(r, depth, Some(usize::from(tag - 0x78)))?,
            b'M' => {
                self.type_name(r)?;
                self.entries(r, depth)?;
            }
            b'H' => self.entries(r, depth)?,
            b'O' => {
                let idx = read_int(r)?;
                self.fields(r, depth, i64::from(idx))?;
            }
            0x60..=0x6f => self.fields(r, depth, i64::from(tag - 0x60))?,
            0x51 => {
                let idx = read_int(r)?;
                if usize::try_from(idx).map_or(true, |i| i >= self.refs) {
                    return Err(Error::UnknownRef {
                        index: i64::from(idx),
                    }
                    .into());
                }
            }
            _ => {
                return Err(Error::UnexpectedTag {
                    tag,
                    offset: at,
                    expected: "a value",
                }
                .into())
            }
        }
        Ok(())
    }

    fn type_name(&mut self, r: &mut Reader<'_>) -> Step<()> {
        let at = r.pos;
        let tag = r.u8()?;
        match tag {
            0x00..=0x1f | 0x30..=0x33 | b'S' | b'R' => {
                skip_string_body(tag, at, r)?;
                self.types += 1;
                Ok(())
            }
            0x80..=0xbf | 0xc0..=0xcf | 0xd0..=0xd7 | b'I' => {
                let i = int_body(tag, r)?;
                match usize::try_from(i) {
                    Ok(i) if i < self.types => Ok(()),
                    _ => Err(Error::UnknownType {
                        index: i64::from(i),
                    }
                    .into()),
                }
            }
            _ => Err(Error::UnexpectedTag {
                tag,
                offset: at,
                expected: "a type name",
            }
            .into()),
        }
    }

    fn items(&mut self, r: &mut Reader<'_>, depth: usize, len: Option<usize>) -> Step<()> {
        self.refs += 1;
        match len {
            Some(n) => {
                for _ in 0..n {
                    self.value(r, depth + 1)?;
                }
            }
            None => {
                let mut n = 0;
                while r.peek()? != b'Z' {
                    if n >= MAX_COLLECTION_LEN {
                        return Err(too_long("list", n));
                    }
                    self.value(r, depth + 1)?;
                    n += 1;
                }
                r.pos += 1;
            }
        }
        Ok(())
    }

    fn entries(&mut self, r: &mut Reader<'_>, depth: usize) -> Step<()> {
        self.refs += 1;
        let mut n = 0;
        while r.peek()? != b'Z' {
            if n >= MAX_COLLECTION_LEN {
                return Err(too_long("map", n));
            }
            self.value(r, depth + 1)?;
            self.value(r, depth + 1)?;
            n += 1;
        }
        r.pos += 1;
        Ok(())
    }

    fn fields(&mut self, r: &mut Reader<'_>, depth: usize, idx: i64) -> Step<()> {
        let n = usize::try_from(idx)
            .ok()
            .and_then(|i| self.classes.get(i))
            .copied()
            .ok_or(Error::UnknownClass { index: idx })?;
        self.refs += 1;
        for _ in 0..n {
            self.value(r, depth + 1)?;
        }
        Ok(())
    }
}

/// Skips a string where the grammar requires one.
fn skip_string(r: &mut Reader<'_>) -> Step<()> {
    let at = r.pos;
    let tag = r.u8()?;
    skip_string_body(tag, at, r)
}

/// Skips a string's chunks: each counts UTF-16 units, walked over its UTF-8 bytes as
/// [`string_body`] reads them (a four-byte sequence is two units).
fn skip_string_body(tag: u8, at: usize, r: &mut Reader<'_>) -> Step<()> {
    let (mut units, mut last) = string_chunk(tag, at, r)?;
    loop {
        if units > r.remaining() {
            return Err(Stop::Incomplete);
        }
        while units > 0 {
            // A run of ASCII (one byte, one unit each) in one step: most strings are.
            let run = r
                .buf
                .get(r.pos..)
                .map_or(0, |rest| ascii_run(&rest[..units.min(rest.len())]));
            r.pos += run;
            units -= run;
            if units == 0 {
                break;
            }
            let start = r.pos;
            let b0 = r.u8()?;
            let extra = match b0 {
                0x00..=0x7f => 0,
                0xc0..=0xdf => 1,
                0xe0..=0xef => 2,
                0xf0..=0xf7 => 3,
                _ => return Err(Error::InvalidUtf8 { offset: start }.into()),
            };
            let mut cp = u32::from(b0) & (0x7f >> extra);
            for _ in 0..extra {
                let b = r.u8()?;
                if b & 0xc0 != 0x80 {
                    return Err(Error::InvalidUtf8 { offset: start }.into());
                }
                cp = (cp << 6) | u32::from(b & 0x3f);
            }
            let width = if extra == 3 { 2 } else { 1 };
            if width > units || (extra == 3 && !(0x1_0000..=0x10_ffff).contains(&cp)) {
                return Err(Error::InvalidUtf8 { offset: start }.into());
            }
            units -= width;
        }
        if last {
            return Ok(());
        }
        let at = r.pos;
        let tag = r.u8()?;
        (units, last) = string_chunk(tag, at, r)?;
    }
}

/// The number of ASCII bytes `s` starts with, counted 64 bytes at a time (a fold the
/// compiler turns into vector instructions), then a word at a time.
fn ascii_run(s: &[u8]) -> usize {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let mut n = 0;
    while let Some(block) = s.get(n..n + 64) {
        if block.iter().fold(0u8, |high, &b| high | b) & 0x80 != 0 {
            break;
        }
        n += 64;
    }
    let mut words = s.get(n..).unwrap_or_default().chunks_exact(8);
    for w in words.by_ref() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let high = u64::from_le_bytes(b) & HIGH_BITS;
        if high != 0 {
            // The first byte with its high bit set ends the run.
            return n + (high.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + words
        .remainder()
        .iter()
        .take_while(|b| b.is_ascii())
        .count()
}

/// Skips a binary value's chunks.
fn skip_binary_body(tag: u8, at: usize, r: &mut Reader<'_>) -> Step<()> {
    let (mut tag, mut at) = (tag, at);
    loop {
        let (len, last) = binary_chunk(tag, at, r)?;
        r.take(len)?;
        if last {
            return Ok(());
        }
        at = r.pos;
        tag = r.u8()?;
    }
}

#[cfg(test)]
mod tests {
    use super::ascii_run;

    #[test]
    fn ascii_runs_end_at_the_first_high_byte() {
        assert_eq!(ascii_run(b""), 0);
        assert_eq!(ascii_run(b"abc"), 3);
        assert_eq!(ascii_run(b"abcdefgh"), 8);
        assert_eq!(ascii_run(b"abcdefghij\xc3\xa9"), 10);
        for at in 0..20 {
            let mut v = vec![b'a'; 20];
            v[at] = 0xe4;
            assert_eq!(ascii_run(&v), at, "non-ASCII at {at}");
        }
    }
}
