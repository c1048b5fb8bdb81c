//! Timestamps as Pitchpoint writes them, and as RFC 3339 wants them.
//!
//! Pitchpoint documents `X-Pps-Triggered-At` as `2024-01-1T10:00:00.7777748Z`: a one-digit day and seven
//! fraction digits. Strict RFC 3339 parsers reject that, and rejecting a delivery loses the event, so this
//! parser is deliberately lenient about widths while still refusing impossible dates.

/// A UTC instant with the fraction digits kept exactly as sent, so that nothing is rounded away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    /// Whole seconds since the Unix epoch.
    pub unix: i64,
    /// Fraction-of-second digits as sent (at most nine), without the dot.
    pub frac: String,
}

/// Parses `Y-M-D[T ]H:M[:S[.f]][Z|±HH:MM|±HHMM]`, one- or two-digit fields allowed; no zone means UTC.
pub fn parse_lenient(input: &str) -> Option<Timestamp> {
    let s = input.trim();
    // Every valid form is ASCII; anything else is refused before any slicing by byte position.
    if !s.is_ascii() {
        return None;
    }
    let sep = s.find(['T', 't', ' '])?;
    let (date, rest) = (&s[..sep], s[sep + 1..].trim_start());

    let mut dparts = date.split('-');
    let year = number(dparts.next()?, 4, 4)?;
    let month = number(dparts.next()?, 1, 2)?;
    let day = number(dparts.next()?, 1, 2)?;
    if dparts.next().is_some() || !(1..=12).contains(&month) || day < 1 {
        return None;
    }
    if day > days_in_month(year, month) {
        return None;
    }

    // Split the zone off the end of the time.
    let (time, offset_secs) = split_zone(rest)?;
    let (hms, frac) = match time.split_once(['.', ',']) {
        Some((hms, frac)) => {
            if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (hms, &frac[..frac.len().min(9)])
        }
        None => (time, ""),
    };
    let mut tparts = hms.split(':');
    let hour = number(tparts.next()?, 1, 2)?;
    let minute = number(tparts.next()?, 1, 2)?;
    let second = match tparts.next() {
        Some(sec) => number(sec, 1, 2)?,
        None if frac.is_empty() => 0,
        None => return None,
    };
    if tparts.next().is_some() || hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let days = days_from_civil(year, month, day);
    let unix = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_secs;
    Some(Timestamp {
        unix,
        frac: frac.to_string(),
    })
}

/// Formats as RFC 3339 UTC, or `None` when the instant's UTC year has not four digits (an offset can carry
/// `9999-12-31T23:59:59-23:59` into year 10000), which RFC 3339 cannot write.
pub fn to_rfc3339(ts: &Timestamp) -> Option<String> {
    let (y, _, _) = civil_from_days(ts.unix.div_euclid(86_400));
    (0..=9999).contains(&y).then(|| format_rfc3339(ts))
}

/// Formats as `YYYY-MM-DDTHH:MM:SS[.f]Z`.
pub fn format_rfc3339(ts: &Timestamp) -> String {
    let days = ts.unix.div_euclid(86_400);
    let secs = ts.unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // By hand rather than `format!`: this runs for every delivery that carries a timestamp.
    let mut out = String::with_capacity(32);
    if !(0..=9999).contains(&y) {
        // Outside RFC 3339's four-digit years; kept readable all the same.
        out.push_str(&y.to_string());
    } else {
        push2(&mut out, (y / 100) as u8);
        push2(&mut out, (y % 100) as u8);
    }
    for (sep, v) in [
        ('-', m),
        ('-', d),
        ('T', secs / 3_600),
        (':', secs % 3_600 / 60),
        (':', secs % 60),
    ] {
        out.push(sep);
        push2(&mut out, v as u8);
    }
    if !ts.frac.is_empty() {
        out.push('.');
        out.push_str(&ts.frac);
    }
    out.push('Z');
    out
}

/// Two decimal digits, zero-padded.
fn push2(out: &mut String, v: u8) {
    out.push(char::from(b'0' + v / 10));
    out.push(char::from(b'0' + v % 10));
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn split_zone(time: &str) -> Option<(&str, i64)> {
    if let Some(t) = time.strip_suffix(['Z', 'z']) {
        return Some((t, 0));
    }
    if let Some(pos) = time.rfind(['+', '-']) {
        let (t, zone) = (&time[..pos], &time[pos + 1..]);
        let sign = if time.as_bytes()[pos] == b'-' { -1 } else { 1 };
        let (hh, mm) = match zone.split_once(':') {
            Some((h, m)) => (number(h, 2, 2)?, number(m, 2, 2)?),
            None if zone.len() == 4 => (number(&zone[..2], 2, 2)?, number(&zone[2..], 2, 2)?),
            None if zone.len() == 2 => (number(zone, 2, 2)?, 0),
            None => return None,
        };
        if hh > 23 || mm > 59 {
            return None;
        }
        return Some((t, sign * (hh * 3_600 + mm * 60)));
    }
    Some((time, 0))
}

fn number(s: &str, min_len: usize, max_len: usize) -> Option<i64> {
    if s.len() < min_len || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> Option<String> {
        parse_lenient(s).map(|t| format_rfc3339(&t))
    }

    #[test]
    fn an_instant_past_year_9999_in_utc_has_no_rfc3339_form() {
        let late = parse_lenient("9999-12-31T23:59:59-23:59").unwrap();
        assert_eq!(to_rfc3339(&late), None);
        let last = parse_lenient("9999-12-31T23:59:59Z").unwrap();
        assert_eq!(to_rfc3339(&last).as_deref(), Some("9999-12-31T23:59:59Z"));
        let early = parse_lenient("0000-01-01T00:00:00+00:01").unwrap();
        assert_eq!(to_rfc3339(&early), None);
    }

    #[test]
    fn documented_pitchpoint_format_is_canonicalised() {
        assert_eq!(
            canon("2024-01-1T10:00:00.7777748Z").as_deref(),
            Some("2024-01-01T10:00:00.7777748Z")
        );
    }

    #[test]
    fn offsets_are_converted_to_utc() {
        assert_eq!(
            canon("2024-03-01T01:30:00+02:00").as_deref(),
            Some("2024-02-29T23:30:00Z")
        );
        assert_eq!(
            canon("2023-12-31T23:00:00-0130").as_deref(),
            Some("2024-01-01T00:30:00Z")
        );
    }

    #[test]
    fn missing_zone_means_utc_and_space_separator_is_accepted() {
        assert_eq!(
            canon("2024-1-2 3:04:05").as_deref(),
            Some("2024-01-02T03:04:05Z")
        );
    }

    #[test]
    fn impossible_or_foreign_values_are_not_parsed() {
        for bad in [
            "",
            "yesterday",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T10:00:00.Z",
            "1704103200",
            "Mon, 01 Jan 2024 10:00:00 GMT",
            "2024-01-01T10:00:00+25:00",
        ] {
            assert_eq!(canon(bad), None, "{bad}");
        }
    }

    #[test]
    fn epoch_round_trips() {
        let t = parse_lenient("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(t.unix, 0);
        let t = parse_lenient("2026-12-31T00:00:00Z").unwrap();
        assert_eq!(t.unix, 1_798_675_200);
        assert_eq!(format_rfc3339(&t), "2026-12-31T00:00:00Z");
    }

    #[test]
    fn a_multibyte_character_where_a_zone_digit_belongs_is_refused_not_a_panic() {
        assert_eq!(parse_lenient("2024-01-01T10:00+1\u{20ac}"), None);
        assert_eq!(parse_lenient("2024-01-01T10:00+\u{20ac}1"), None);
        assert_eq!(parse_lenient("2024-01-1T10:00:00.7\u{20ac}Z"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(s in "\\PC{0,40}") {
            let _ = parse_lenient(&s);
        }

        #[test]
        fn timestamp_shaped_text_with_any_characters_never_panics(
            prefix in "[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}[T ][0-9]{1,2}:[0-9]{1,2}",
            tail in "[0-9:.,+Zz\\- \u{20ac}\u{e9}\u{1F600}]{0,12}",
        ) {
            if let Some(ts) = parse_lenient(&format!("{prefix}{tail}")) {
                proptest::prop_assert!(parse_lenient(&format_rfc3339(&ts)).is_some());
            }
        }
    }
}
