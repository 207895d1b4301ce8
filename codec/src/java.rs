//! Java semantics the mesh must reproduce bit for bit.
//!
//! The race's provider answers `hash(s)` with Java's `String.hashCode`, so the
//! consumer side (tests, mock providers) needs the very same function.
//!
//! ```
//! assert_eq!(codec::java::string_hash_code("hello"), 99162322);
//! ```

/// Java's `String.hashCode`: `h = 31 * h + unit` over the UTF-16 code units,
/// wrapping on overflow.
///
/// Characters outside the BMP count as two units (a surrogate pair), exactly
/// as in Java, so the result matches a JVM for every string.
pub fn string_hash_code(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Whether `s` reads as a qualified Java class name (`com.example.FooException`): two or
/// more dot-separated identifiers. Where JSON or an error text may name a class, this
/// tells a class name from other text.
pub fn is_class_name(s: &str) -> bool {
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
