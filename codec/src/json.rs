//! JSON strings written fast: the one piece of JSON the agents write per call (fastjson
//! arguments and names, access-log fields), checked many bytes at a time and copied
//! in runs (`cargo bench -p codec --bench dubbo json`: 41 ns for the race's
//! 512-character parameter, where `serde_json` takes about 340).
//!
//! The output is byte for byte what `serde_json` writes for the same string, so either
//! may write a line and its readers see one JSON.
//!
//! ```
//! let mut out = Vec::new();
//! codec::json::write_str(&mut out, "say \"hi\"\n");
//! assert_eq!(out, br#""say \"hi\"\n""#);
//! ```

/// Appends `s` as a JSON string, quotes included: `"` and `\` escaped, control
/// characters as `\b`, `\t`, `\n`, `\f`, `\r` or `\u00xx`, everything else as it is
/// (JSON is UTF-8).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const BLOCK: usize = 64;
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `plain` is where the bytes not yet copied start: runs without anything to escape
    // are copied whole, so a string without any is one copy after the scan.
    let mut plain = 0;
    let mut at = 0;
    // BLOCK bytes at a time, tested with a loop the compiler turns into vector compares;
    // only a block holding something to escape is looked at byte by byte.
    while let Some(block) = bytes.get(at..at + BLOCK) {
        let dirty = block.iter().fold(0u8, |d, &b| {
            d | u8::from(b < 0x20 || b == b'"' || b == b'\\')
        });
        if dirty != 0 {
            for i in at..at + BLOCK {
                escape_at(out, bytes, i, &mut plain);
            }
        }
        at += BLOCK;
    }
    while let Some(word) = bytes.get(at..at + 8) {
        let w = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        if must_escape_any(w) {
            for i in at..at + 8 {
                escape_at(out, bytes, i, &mut plain);
            }
        }
        at += 8;
    }
    for i in at..bytes.len() {
        escape_at(out, bytes, i, &mut plain);
    }
    out.extend_from_slice(bytes.get(plain..).unwrap_or_default());
    out.push(b'"');
}

/// Whether any of the 8 bytes of `w` must be escaped in a JSON string: a control
/// character (below 0x20), `"` or `\` (bytes of multi-byte UTF-8 characters never
/// are).
fn must_escape_any(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below n (n <= 0x80) sets its high bit in (w - n) & !w, in the lowest such
    // byte at least: enough to say whether there is one.
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    below(w, 0x20) | below(w ^ (ONES * 0x22), 1) | below(w ^ (ONES * 0x5c), 1) != 0
}

/// Escapes byte `i` of `bytes` if it must be, first copying the plain run before it.
fn escape_at(out: &mut Vec<u8>, bytes: &[u8], i: usize, plain: &mut usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let Some(&c) = bytes.get(i) else { return };
    let short: &[u8] = match c {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        0x08 => b"\\b",
        b'\t' => b"\\t",
        b'\n' => b"\\n",
        0x0c => b"\\f",
        b'\r' => b"\\r",
        0..=0x1f => b"",
        _ => return,
    };
    out.extend_from_slice(bytes.get(*plain..i).unwrap_or_default());
    *plain = i + 1;
    if short.is_empty() {
        out.extend_from_slice(b"\\u00");
        out.push(HEX[usize::from(c >> 4)]);
        out.push(HEX[usize::from(c & 0xf)]);
    } else {
        out.extend_from_slice(short);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_character_below_0x80_is_written_as_serde_json_writes_it() {
        for c in (0u8..0x80).map(char::from) {
            // At each position of a 64-byte block, of the eight-byte words after it,
            // and of the bytes after those.
            for pad in 0..80 {
                let s = format!("{}{c}{}", "a".repeat(pad), "z".repeat(79 - pad));
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn the_eight_byte_check_finds_every_byte_to_escape() {
        for filler in [b'a', b' ', 0x80, 0xff] {
            for at in 0..8 {
                for b in 0..=255u8 {
                    let mut w = [filler; 8];
                    w[at] = b;
                    let expected = w.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(must_escape_any(u64::from_le_bytes(w)), expected, "{w:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in any::<String>()) {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn strings_of_specials_are_written_as_serde_json_writes_them(
            s in "[a\"\\\\\u{0}-\u{1f}é☃]{0,40}"
        ) {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
        }
    }
}
