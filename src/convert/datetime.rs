//! Graph `DateTimeOffset` text ⇄ instants and `google.protobuf.Timestamp`.
//!
//! Hand-written rather than taken from a date crate: Graph readers must accept
//! up to 12 fractional digits (common RFC 3339 parsers stop at 9), and the hot
//! path formats into a stack buffer without allocating more than the result.
//!
//! - Writing: UTC, `Z`, exactly 7 fractional digits (Graph's 100 ns ticks).
//!   Nanoseconds below 100 ns are truncated, never rounded, so the written
//!   instant is never later than the one given.
//! - Reading: `YYYY-MM-DDTHH:MM:SS[.f]` with 0 to 12 fractional digits and `Z`,
//!   `+hh:mm` or `-hh:mm`. The instant is exact to the nanosecond; digits past
//!   the ninth are truncated. No offset is an error.

use prost_types::Timestamp;

/// Smallest `Timestamp` seconds: `0001-01-01T00:00:00Z`, Graph's "never".
pub const MIN_SECONDS: i64 = -62_135_596_800;
/// Largest `Timestamp` seconds: `9999-12-31T23:59:59Z`.
pub const MAX_SECONDS: i64 = 253_402_300_799;

/// An instant as seconds since the Unix epoch and nanoseconds (0..1e9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    pub seconds: i64,
    pub nanos: u32,
}

/// Why a DateTimeOffset text or a Timestamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateTimeError {
    #[error(
        "is not an RFC 3339 date-time with an offset (YYYY-MM-DDThh:mm:ss[.fffffff]Z or ±hh:mm)"
    )]
    Syntax,
    #[error("has no time zone offset (add Z or ±hh:mm)")]
    NoOffset,
    #[error("has more than 12 fractional digits")]
    TooPrecise,
    #[error("names a day, hour, minute or second that does not exist")]
    OutOfRange,
    #[error("is outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z")]
    InstantOutOfRange,
    #[error("has nanos outside 0..=999999999")]
    InvalidNanos,
}

/// Converts a Timestamp to Graph's text: UTC, `Z`, 7 fractional digits.
pub fn timestamp_to_graph(ts: &Timestamp) -> Result<String, DateTimeError> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(DateTimeError::InvalidNanos);
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(DateTimeError::InstantOutOfRange);
    }
    Ok(format_utc(Instant {
        seconds: ts.seconds,
        nanos: ts.nanos as u32,
    }))
}

/// Parses Graph's text into a Timestamp; the instant must fit a Timestamp.
pub fn timestamp_from_graph(text: &str) -> Result<Timestamp, DateTimeError> {
    let i = parse(text)?;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&i.seconds) {
        return Err(DateTimeError::InstantOutOfRange);
    }
    Ok(Timestamp {
        seconds: i.seconds,
        nanos: i.nanos as i32,
    })
}

/// Formats an instant in years 1..=9999 as `YYYY-MM-DDThh:mm:ss.fffffffZ`.
///
/// Instants outside that range are clamped to it (callers check the range).
pub fn format_utc(i: Instant) -> String {
    let seconds = i.seconds.clamp(MIN_SECONDS, MAX_SECONDS);
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let ticks = i.nanos.min(999_999_999) / 100;

    let mut buf = *b"0000-00-00T00:00:00.0000000Z";
    put_digits(&mut buf[0..4], year as u32);
    put_digits(&mut buf[5..7], month);
    put_digits(&mut buf[8..10], day);
    put_digits(&mut buf[11..13], secs_of_day / 3600);
    put_digits(&mut buf[14..16], secs_of_day / 60 % 60);
    put_digits(&mut buf[17..19], secs_of_day % 60);
    put_digits(&mut buf[20..27], ticks);
    // Only ASCII digits and punctuation were written.
    String::from_utf8(buf.to_vec()).unwrap_or_default()
}

fn put_digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Parses an RFC 3339 date-time with an offset and 0 to 12 fractional digits.
pub fn parse(text: &str) -> Result<Instant, DateTimeError> {
    let b = text.as_bytes();
    if b.len() < 19 {
        return Err(DateTimeError::Syntax);
    }
    let punct = |at: usize, want: &[u8]| want.contains(&b[at]);
    if !(punct(4, b"-") && punct(7, b"-") && punct(10, b"Tt") && punct(13, b":") && punct(16, b":"))
    {
        return Err(DateTimeError::Syntax);
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if year == 0
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(DateTimeError::OutOfRange);
    }

    let mut at = 19;
    let mut nanos: u32 = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        let count = at - start;
        if count == 0 {
            return Err(DateTimeError::Syntax);
        }
        if count > 12 {
            return Err(DateTimeError::TooPrecise);
        }
        for (k, &d) in b[start..at].iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - k as u32);
        }
    }

    let offset_seconds: i64 = match &b[at..] {
        [] => return Err(DateTimeError::NoOffset),
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2])?;
            let minutes = digits(&[*m1, *m2])?;
            if hours > 23 || minutes > 59 {
                return Err(DateTimeError::OutOfRange);
            }
            let total = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'-' { -total } else { total }
        }
        _ => return Err(DateTimeError::Syntax),
    };

    let days = days_from_civil(i64::from(year), month, day);
    let local = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Ok(Instant {
        seconds: local - offset_seconds,
        nanos,
    })
}

fn digits(b: &[u8]) -> Result<u32, DateTimeError> {
    b.iter().try_fold(0u32, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + u32::from(c - b'0'))
        } else {
            Err(DateTimeError::Syntax)
        }
    })
}

fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn writes_utc_with_seven_digits() {
        let table = [
            (ts(0, 0), "1970-01-01T00:00:00.0000000Z"),
            (
                ts(1_483_257_778, 441_804_500),
                "2017-01-01T08:02:58.4418045Z",
            ),
            // Sub-100 ns digits are truncated, not rounded.
            (
                ts(1_483_257_778, 441_804_599),
                "2017-01-01T08:02:58.4418045Z",
            ),
            (
                ts(1_483_257_778, 999_999_999),
                "2017-01-01T08:02:58.9999999Z",
            ),
            (ts(-1, 0), "1969-12-31T23:59:59.0000000Z"),
            (ts(-1, 500_000_000), "1969-12-31T23:59:59.5000000Z"),
            (ts(951_782_400, 0), "2000-02-29T00:00:00.0000000Z"),
            (ts(MIN_SECONDS, 0), "0001-01-01T00:00:00.0000000Z"),
            (ts(MAX_SECONDS, 999_999_999), "9999-12-31T23:59:59.9999999Z"),
            (ts(-2_208_988_800, 100), "1900-01-01T00:00:00.0000001Z"),
        ];
        for (input, want) in table {
            assert_eq!(timestamp_to_graph(&input).as_deref(), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn refuses_invalid_timestamps() {
        let table = [
            (ts(0, -1), DateTimeError::InvalidNanos),
            (ts(0, 1_000_000_000), DateTimeError::InvalidNanos),
            (ts(MIN_SECONDS - 1, 0), DateTimeError::InstantOutOfRange),
            (ts(MAX_SECONDS + 1, 0), DateTimeError::InstantOutOfRange),
            (ts(i64::MIN, 0), DateTimeError::InstantOutOfRange),
            (ts(i64::MAX, 0), DateTimeError::InstantOutOfRange),
        ];
        for (input, want) in table {
            assert_eq!(timestamp_to_graph(&input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn reads_offsets_and_precisions_as_exact_instants() {
        let table = [
            (
                "2017-01-01T08:02:58.4418045Z",
                ts(1_483_257_778, 441_804_500),
            ),
            (
                "2017-01-01T00:02:58.4418045-08:00",
                ts(1_483_257_778, 441_804_500),
            ),
            (
                "2017-01-01T11:02:58.4418045+03:00",
                ts(1_483_257_778, 441_804_500),
            ),
            ("2017-01-01T08:02:58Z", ts(1_483_257_778, 0)),
            ("2017-01-01T08:02:58.4Z", ts(1_483_257_778, 400_000_000)),
            (
                "2017-01-01T08:02:58.441804+00:00",
                ts(1_483_257_778, 441_804_000),
            ),
            (
                "2017-01-01T08:02:58.441804512Z",
                ts(1_483_257_778, 441_804_512),
            ),
            (
                "2017-01-01T08:02:58.441804512999Z",
                ts(1_483_257_778, 441_804_512),
            ),
            ("2017-01-01t08:02:58z", ts(1_483_257_778, 0)),
            ("2017-01-01T06:02:58-02:00", ts(1_483_257_778, 0)),
            ("1969-12-31T23:59:59.5Z", ts(-1, 500_000_000)),
            ("1900-01-01T00:00:00Z", ts(-2_208_988_800, 0)),
            ("0001-01-01T00:00:00Z", ts(MIN_SECONDS, 0)),
            ("0001-01-01T00:00:00.0000000Z", ts(MIN_SECONDS, 0)),
            ("0001-01-01T01:00:00+01:00", ts(MIN_SECONDS, 0)),
            ("9999-12-31T23:59:59.9999999Z", ts(MAX_SECONDS, 999_999_900)),
            (
                "9999-12-31T23:59:59.999999999999Z",
                ts(MAX_SECONDS, 999_999_999),
            ),
            ("2000-02-29T00:00:00Z", ts(951_782_400, 0)),
            (
                "2016-12-31T23:58:26.9294641-08:00",
                ts(1_483_257_506, 929_464_100),
            ),
            ("2020-06-15T12:00:00+14:00", ts(1_592_172_000, 0)),
        ];
        for (input, want) in table {
            assert_eq!(timestamp_from_graph(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_bad_text() {
        let table = [
            ("", DateTimeError::Syntax),
            ("2017-01-01", DateTimeError::Syntax),
            ("2017-01-01 08:02:58Z", DateTimeError::Syntax),
            ("2017-01-01T08:02:58", DateTimeError::NoOffset),
            ("2017-01-01T08:02:58.4418045", DateTimeError::NoOffset),
            ("2017-01-01T08:02:58.Z", DateTimeError::Syntax),
            (
                "2017-01-01T08:02:58.1234567890123Z",
                DateTimeError::TooPrecise,
            ),
            ("2017-13-01T08:02:58Z", DateTimeError::OutOfRange),
            ("2017-02-29T08:02:58Z", DateTimeError::OutOfRange),
            ("1900-02-29T08:02:58Z", DateTimeError::OutOfRange),
            ("2017-04-31T08:02:58Z", DateTimeError::OutOfRange),
            ("2017-01-01T24:00:00Z", DateTimeError::OutOfRange),
            ("2017-01-01T23:60:00Z", DateTimeError::OutOfRange),
            ("2017-01-01T23:59:60Z", DateTimeError::OutOfRange),
            ("0000-01-01T00:00:00Z", DateTimeError::OutOfRange),
            ("2017-01-01T08:02:58+0800", DateTimeError::Syntax),
            ("2017-01-01T08:02:58+24:00", DateTimeError::OutOfRange),
            ("2017-01-01T08:02:58ZZ", DateTimeError::Syntax),
            ("+2017-01-01T08:02:58Z", DateTimeError::Syntax),
            ("2017-0a-01T08:02:58Z", DateTimeError::Syntax),
            ("２017-01-01T08:02:58Z", DateTimeError::Syntax),
            (
                "0001-01-01T00:00:00+01:00",
                DateTimeError::InstantOutOfRange,
            ),
            (
                "9999-12-31T23:59:59-01:00",
                DateTimeError::InstantOutOfRange,
            ),
        ];
        for (input, want) in table {
            assert_eq!(timestamp_from_graph(input), Err(want), "{input}");
        }
    }

    #[test]
    fn round_trips_every_day_boundary_of_interest() {
        // Every 97th day across the whole range, plus leap days.
        let mut day = MIN_SECONDS / 86_400;
        while day <= MAX_SECONDS / 86_400 {
            let t = ts(day * 86_400 + 3_723, 123_456_700);
            let text = timestamp_to_graph(&t).unwrap();
            assert_eq!(timestamp_from_graph(&text), Ok(t), "{text}");
            day += 97;
        }
    }
}
