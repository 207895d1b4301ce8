//! `java.math.BigDecimal` and `java.math.BigInteger` on the wire and as text.
//!
//! Dubbo's hessian-lite writes a BigDecimal as an object of one field, `value`,
//! holding `toString()` (`StringValueSerializer`); Caucho hessian 4.0.38 registers
//! nothing for it and writes its fields by reflection, losing the value, so a
//! Caucho peer must be configured as Dubbo's is. Both write a BigInteger by
//! reflection: `signum` (int) and `mag` (`[int`, the magnitude's 32-bit words, most
//! significant first), plus cache fields whose names depend on the JDK (JDK 17:
//! `bitCountPlusOne`, ...; JDK 8: `bitCount`, ...) and whose zero means "not
//! computed": we write only `signum` and `mag`, which every JDK reads.

use super::Value;

/// The class names.
pub const BIG_DECIMAL: &str = "java.math.BigDecimal";
/// See [`BIG_DECIMAL`].
pub const BIG_INTEGER: &str = "java.math.BigInteger";

/// Most decimal digits a BigInteger argument may have: the conversion is
/// quadratic, and request bodies are not to buy CPU time with it.
pub const MAX_BIG_DIGITS: usize = 10_000;
/// Most magnitude words of a decoded BigInteger rendered as digits (about
/// [`MAX_BIG_DIGITS`]); a longer one is rendered as the object it is.
const MAX_BIG_WORDS: usize = 1_040;

/// Whether `s` is a number `new java.math.BigDecimal(s)` accepts (see
/// [`java_decimal_text`]).
pub fn is_decimal_text(s: &str) -> bool {
    java_decimal_text(s).is_some()
}

/// What `new java.math.BigDecimal(s).toString()` gives, or `None` when Java would
/// refuse `s`: a sign, digits with an optional point (`1.50`, `.5`, `5.`), an
/// optional exponent (`1e-7`) of at most 9 digits, a scale within Java's int.
/// Written this way the bytes are the ones Java writes (`1e-7` becomes `1E-7`,
/// `+0.50` becomes `0.50`; the scale is kept).
pub fn java_decimal_text(s: &str) -> Option<String> {
    let (negative, rest) = split_sign(s.as_bytes());
    let (mantissa, exponent) = match rest.iter().position(|&c| c == b'e' || c == b'E') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &[][..]),
    };
    if int.len() + frac.len() == 0 || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let exponent = match exponent {
        None => 0,
        Some(e) => {
            let (negative, d) = split_sign(e);
            if d.is_empty() || d.len() > 9 || !d.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let v = d.iter().fold(0i64, |a, &c| a * 10 + i64::from(c - b'0'));
            if negative {
                -v
            } else {
                v
            }
        }
    };
    let scale = i64::try_from(frac.len()).ok()? - exponent;
    i32::try_from(scale).ok()?;
    let mut digits: Vec<u8> = int
        .iter()
        .chain(frac)
        .copied()
        .skip_while(|&c| c == b'0')
        .collect();
    if digits.is_empty() {
        digits.push(b'0');
    }
    let digits = String::from_utf8(digits).ok()?;
    let n = i64::try_from(digits.len()).ok()?;
    // Java's BigDecimal.layoutChars(true).
    let adjusted = n - 1 - scale;
    let mut out = String::with_capacity(digits.len() + 16);
    if negative && digits != "0" {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if scale > 0 && adjusted >= -6 {
        if scale >= n {
            // At most 5 zeros: adjusted >= -6 bounds scale - n.
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (scale - n) as usize));
            out.push_str(&digits);
        } else {
            let point = (n - scale) as usize;
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        if adjusted != 0 {
            out.push('E');
            if adjusted > 0 {
                out.push('+');
            }
            out.push_str(&adjusted.to_string());
        }
    }
    Some(out)
}

fn split_sign(b: &[u8]) -> (bool, &[u8]) {
    match b {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        all => (false, all),
    }
}

/// The sign and magnitude words (most significant first) of a decimal integer
/// (`-123`, `+7`, `0`), or `None` when `s` is not one or has more than
/// [`MAX_BIG_DIGITS`] digits.
pub fn integer_words(s: &str) -> Option<(i32, Vec<u32>)> {
    let (negative, digits) = split_sign(s.as_bytes());
    if digits.is_empty() || digits.len() > MAX_BIG_DIGITS || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // Little-endian words; each step multiplies by 10^k and adds k digits.
    let mut words: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    for chunk in digits.chunks(9) {
        let mul = 10u64.pow(chunk.len() as u32);
        let mut carry = chunk
            .iter()
            .fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
        for w in &mut words {
            let x = u64::from(*w) * mul + carry;
            *w = x as u32;
            carry = x >> 32;
        }
        if carry > 0 {
            words.push(carry as u32);
        }
    }
    while words.last() == Some(&0) {
        words.pop();
    }
    words.reverse();
    let signum = match (words.is_empty(), negative) {
        (true, _) => 0,
        (false, true) => -1,
        (false, false) => 1,
    };
    Some((signum, words))
}

/// The decimal text of a sign and magnitude (most significant word first), or
/// `None` for a sign other than -1, 0, 1, a zero sign with a non-zero
/// magnitude, or more than [`MAX_BIG_WORDS`] words.
pub fn words_to_decimal(signum: i32, mag: &[u32]) -> Option<String> {
    if mag.len() > MAX_BIG_WORDS || !(-1..=1).contains(&signum) {
        return None;
    }
    let zero = mag.iter().all(|&w| w == 0);
    if signum == 0 || zero {
        return (zero).then(|| "0".to_owned());
    }
    let mut rest: Vec<u32> = mag.to_vec();
    let mut groups = Vec::new();
    while rest.iter().any(|&w| w != 0) {
        let mut rem = 0u64;
        for w in &mut rest {
            let x = (rem << 32) | u64::from(*w);
            *w = (x / 1_000_000_000) as u32;
            rem = x % 1_000_000_000;
        }
        groups.push(rem as u32);
    }
    let mut s = String::with_capacity(groups.len() * 9 + 1);
    if signum < 0 {
        s.push('-');
    }
    let mut iter = groups.iter().rev();
    if let Some(first) = iter.next() {
        s.push_str(&first.to_string());
    }
    for g in iter {
        s.push_str(&format!("{g:09}"));
    }
    Some(s)
}

/// A BigDecimal as Dubbo writes it: one field, `value`, with its text.
pub fn big_decimal_value(text: &str) -> Value {
    Value::Object {
        class: BIG_DECIMAL.to_owned(),
        fields: vec![("value".to_owned(), Value::String(text.to_owned()))],
    }
}

/// A BigInteger as Java writes it, less the cache fields: `signum` and `mag`.
pub fn big_integer_value(signum: i32, mag: &[u32]) -> Value {
    Value::Object {
        class: BIG_INTEGER.to_owned(),
        fields: vec![
            ("signum".to_owned(), Value::Int(signum)),
            (
                "mag".to_owned(),
                Value::List {
                    type_name: Some("[int".to_owned()),
                    items: mag.iter().map(|&w| Value::Int(w as i32)).collect(),
                },
            ),
        ],
    }
}

/// The numeric text of a decoded BigDecimal (its `value` field) or BigInteger
/// (its `signum` and `mag` fields), when the object is one and reads as one.
pub fn big_number_text(class: &str, fields: &[(String, Value)]) -> Option<String> {
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    match class {
        BIG_DECIMAL => match field("value")? {
            Value::String(s) if is_decimal_text(s) => Some(s.clone()),
            _ => None,
        },
        BIG_INTEGER => {
            let Value::Int(signum) = field("signum")? else {
                return None;
            };
            let Value::List { items, .. } = field("mag")? else {
                return None;
            };
            let mag = items
                .iter()
                .map(|w| match w {
                    Value::Int(i) => Some(*i as u32),
                    _ => None,
                })
                .collect::<Option<Vec<u32>>>()?;
            words_to_decimal(*signum, &mag)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_both_ways() {
        for (s, signum, mag) in [
            ("0", 0, vec![]),
            ("-0", 0, vec![]),
            ("000", 0, vec![]),
            ("123", 1, vec![123]),
            ("+123", 1, vec![123]),
            ("4294967295", 1, vec![u32::MAX]),
            ("4294967296", 1, vec![1, 0]),
            (
                "-123456789012345678901234567890",
                -1,
                vec![0x1, 0x8ee90ff6, 0xc373e0ee, 0x4e3f0ad2],
            ),
        ] {
            assert_eq!(integer_words(s), Some((signum, mag.clone())), "{s}");
            let back = words_to_decimal(signum, &mag).unwrap();
            let canonical = match s.trim_start_matches(['+', '-', '0']) {
                "" => "0".to_owned(),
                _ => s.trim_start_matches('+').to_owned(),
            };
            assert_eq!(back, canonical, "{s}");
        }
        let long = "9".repeat(MAX_BIG_DIGITS);
        let (sg, mag) = integer_words(&long).unwrap();
        assert_eq!(words_to_decimal(sg, &mag).as_deref(), Some(long.as_str()));
        for bad in [
            "",
            "-",
            "1.0",
            "1e3",
            " 1",
            "0x10",
            &"1".repeat(MAX_BIG_DIGITS + 1),
        ] {
            assert_eq!(integer_words(bad), None, "{bad}");
        }
        assert_eq!(words_to_decimal(2, &[1]), None);
        assert_eq!(words_to_decimal(0, &[1]), None);
        assert_eq!(words_to_decimal(1, &[0, 0]).as_deref(), Some("0"));
        assert_eq!(words_to_decimal(1, &[0, 7]).as_deref(), Some("7"));
    }

    #[test]
    fn decimal_texts_as_java_prints_them() {
        // Expected values: BigDecimal(s).toString() on JDK 17.
        for (s, java) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.00", "0.00"),
            ("0e3", "0E+3"),
            ("1.50", "1.50"),
            ("+0.50", "0.50"),
            ("00012.3400", "12.3400"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1e10", "1E+10"),
            ("-1E+10", "-1E+10"),
            ("1e-7", "1E-7"),
            ("1.5e-7", "1.5E-7"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1E-7"),
            ("0.0000010", "0.0000010"),
            ("123.456e2", "12345.6"),
            ("123.456e5", "1.23456E+7"),
            ("12e-1", "1.2"),
            ("1e0", "1"),
            ("1e-0", "1"),
            ("9.99", "9.99"),
            ("-00.000e-5", "0E-8"),
            ("1e999999999", "1E+999999999"),
        ] {
            assert_eq!(java_decimal_text(s).as_deref(), Some(java), "{s}");
        }
    }

    #[test]
    fn decimal_texts() {
        for ok in [
            "0", "1.50", "-1.5", "+1", ".5", "5.", "1E+10", "1e-7", "-0.000",
        ] {
            assert!(is_decimal_text(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "-",
            "1e",
            "1e+",
            "1.2.3",
            "NaN",
            "1_000",
            "1e1234567890",
            " 1",
        ] {
            assert!(!is_decimal_text(bad), "{bad}");
        }
    }
}
