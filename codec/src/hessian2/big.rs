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

/// Whether `s` is a number `new java.math.BigDecimal(s)` accepts: a sign, digits
/// with an optional point (`1.50`, `.5`, `5.`), an optional exponent
/// (`1E+10`) within what Java's int scale can hold.
pub fn is_decimal_text(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let mut n = digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        n += digits(&mut i);
    }
    if n == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        i += usize::from(matches!(b.get(i), Some(b'+' | b'-')));
        let e = digits(&mut i);
        // Up to 9 digits: the exponent stays far inside Java's int scale.
        if e == 0 || e > 9 {
            return false;
        }
    }
    i == b.len()
}

/// The sign and magnitude words (most significant first) of a decimal integer
/// (`-123`, `+7`, `0`), or `None` when `s` is not one or has more than
/// [`MAX_BIG_DIGITS`] digits.
pub fn integer_words(s: &str) -> Option<(i32, Vec<u32>)> {
    let (negative, digits) = match s.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        all => (false, all),
    };
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
