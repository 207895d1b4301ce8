//! `java.util.Date` as text: ISO 8601 in UTC out, the common ISO 8601 forms in.

/// Milliseconds per day.
const DAY_MS: i64 = 86_400_000;

/// Format epoch milliseconds as ISO 8601 UTC, e.g. `2018-06-01T12:00:00.000Z`.
pub fn iso8601(millis: i64) -> String {
    let days = millis.div_euclid(DAY_MS);
    let ms = millis.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if (0..=9999).contains(&y) {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    } else {
        format!("{y:+07}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

/// Parse ISO 8601 into epoch milliseconds: a date (`2018-06-01`, midnight UTC) or a
/// date and time (`T` or a space between) with optional seconds and fraction
/// (digits past milliseconds are dropped), then `Z`, an offset (`+08:00`, `+0800`,
/// `+08`) or nothing (UTC). Years are 4 digits, or a sign and 6 digits as
/// [`iso8601`] writes them outside 0000..=9999. `None` for anything else.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let mut c = Cursor(s.as_bytes());
    let year = match c.peek() {
        Some(sign @ (b'+' | b'-')) => {
            c.skip(1);
            let y = c.digits(6)?;
            if sign == b'-' {
                -y
            } else {
                y
            }
        }
        _ => c.digits(4)?,
    };
    c.expect(b'-')?;
    let month = c.digits(2)?;
    c.expect(b'-')?;
    let day = c.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * DAY_MS;
    if c.is_empty() {
        return Some(ms);
    }
    if !matches!(c.peek(), Some(b'T' | b't' | b' ')) {
        return None;
    }
    c.skip(1);
    let hour = c.digits(2)?;
    c.expect(b':')?;
    let minute = c.digits(2)?;
    let mut second = 0;
    if c.peek() == Some(b':') {
        c.skip(1);
        second = c.digits(2)?;
        if matches!(c.peek(), Some(b'.' | b',')) {
            c.skip(1);
            let mut frac = 0;
            let mut n = 0;
            while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
                if n < 3 {
                    frac = frac * 10 + i64::from(d - b'0');
                }
                n += 1;
                c.skip(1);
            }
            if n == 0 {
                return None;
            }
            for _ in n..3 {
                frac *= 10;
            }
            ms += frac;
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    ms += ((hour * 60 + minute) * 60 + second) * 1000;
    let offset_minutes = match c.peek() {
        None => 0,
        Some(b'Z' | b'z') => {
            c.skip(1);
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            c.skip(1);
            let oh = c.digits(2)?;
            if c.peek() == Some(b':') {
                c.skip(1);
            }
            let om = if c.is_empty() { 0 } else { c.digits(2)? };
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
        Some(_) => return None,
    };
    if !c.is_empty() {
        return None;
    }
    Some(ms - offset_minutes * 60_000)
}

/// Whether `s` is exactly what [`iso8601`] writes for years 0000..=9999
/// (`2018-06-01T12:00:00.123Z`): the form read back as a date where JSON gives no
/// type.
pub fn is_rendered_iso8601(s: &str) -> bool {
    const SHAPE: &[u8; 24] = b"0000-00-00T00:00:00.000Z";
    s.len() == SHAPE.len()
        && s.bytes().zip(SHAPE).all(|(b, &p)| match p {
            b'0' => b.is_ascii_digit(),
            _ => b == p,
        })
        && parse_iso8601(s).is_some()
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn skip(&mut self, n: usize) {
        self.0 = self.0.get(n..).unwrap_or_default();
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.skip(1))
    }

    /// Exactly `n` ASCII digits as a number.
    fn digits(&mut self, n: usize) -> Option<i64> {
        let d = self.0.get(..n)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.skip(n);
        Some(d.iter().fold(0, |a, &b| a * 10 + i64::from(b - b'0')))
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_writes_and_common_forms() {
        for ms in [
            0,
            -1,
            1_527_854_400_123,
            951_782_400_000,
            -62_135_596_800_000,
            253_402_300_799_999,
            253_402_300_800_000,
        ] {
            assert_eq!(parse_iso8601(&iso8601(ms)), Some(ms), "{}", iso8601(ms));
        }
        let t = 1_527_854_400_000;
        for (s, want) in [
            ("2018-06-01", t - 12 * 3_600_000),
            ("2018-06-01T12:00", t),
            ("2018-06-01T12:00:00", t),
            ("2018-06-01 12:00:00Z", t),
            ("2018-06-01T12:00:00.1Z", t + 100),
            ("2018-06-01T12:00:00.123456789Z", t + 123),
            ("2018-06-01T20:00:00+08:00", t),
            ("2018-06-01T20:00:00+0800", t),
            ("2018-06-01T20:00:00+08", t),
            ("2018-06-01T04:30:00-07:30", t),
        ] {
            assert_eq!(parse_iso8601(s), Some(want), "{s}");
        }
        for bad in [
            "",
            "2018",
            "2018-6-01",
            "2018-02-29",
            "2018-13-01",
            "2018-06-01T24:00",
            "2018-06-01T12",
            "2018-06-01T12:00:00.",
            "2018-06-01T12:00:00Zx",
            "2018-06-01T12:00+8",
            "yesterday",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
        assert!(is_rendered_iso8601("2018-06-01T12:00:00.123Z"));
        assert!(!is_rendered_iso8601("2018-06-01T12:00:00Z"));
        assert!(!is_rendered_iso8601("2018-02-30T12:00:00.000Z"));
    }
}
