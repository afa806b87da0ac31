//! Graph's `Edm.DateTimeOffset`, the emulator's own way: RFC 3339 text with an
//! offset and 0-12 fractional digits in (parsed by the `time` crate), an
//! instant kept at Graph's 100 ns precision, UTC with 7 digits out.

use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::datetime};

/// An instant in UTC, a whole number of 100 ns ticks, in years 1-9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(OffsetDateTime);

impl Instant {
    /// `0001-01-01T00:00:00Z`, Graph's value for "never" in a non-null property.
    pub const NEVER: Instant = Instant(datetime!(0001-01-01 0:00 UTC));

    pub fn now() -> Instant {
        let now = OffsetDateTime::now_utc();
        Instant(
            now.replace_nanosecond(now.nanosecond() / 100 * 100)
                .unwrap_or(now),
        )
    }

    /// Parses Graph's input format; `None` for anything else (no offset, a
    /// separator other than `T`, more than 12 fractional digits, out of range).
    pub fn parse(text: &str) -> Option<Instant> {
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
            return None;
        }
        // The date and time before the fraction hold no '.'.
        if let Some(point) = text.find('.') {
            let digits = text[point + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if !(1..=12).contains(&digits) {
                return None;
            }
        }
        let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        // Through a timestamp, so that a UTC year past 9999 is an error, not a panic.
        let utc = OffsetDateTime::from_unix_timestamp_nanos(parsed.unix_timestamp_nanos()).ok()?;
        if !(1..=9999).contains(&utc.year()) {
            return None;
        }
        utc.replace_nanosecond(utc.nanosecond() / 100 * 100)
            .ok()
            .map(Instant)
    }

    /// Graph's output format: UTC, `Z`, exactly 7 fractional digits.
    pub fn to_graph(self) -> String {
        let t = self.0;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 100
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Instant;

    fn graph(text: &str) -> Option<String> {
        Instant::parse(text).map(Instant::to_graph)
    }

    #[test]
    fn accepts_any_offset_and_zero_to_twelve_digits() {
        let cases = [
            (
                "2017-01-01T00:02:58.4418045-08:00",
                "2017-01-01T08:02:58.4418045Z",
            ),
            (
                "2017-01-01T08:02:49.320597+00:00",
                "2017-01-01T08:02:49.3205970Z",
            ),
            (
                "2017-01-01T08:02:49.123456789012Z",
                "2017-01-01T08:02:49.1234567Z",
            ),
            ("2017-01-01T08:02:49Z", "2017-01-01T08:02:49.0000000Z"),
            (
                "2017-01-01T02:02:49.5+03:00",
                "2016-12-31T23:02:49.5000000Z",
            ),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.0000000Z"),
            (
                "9999-12-31T23:59:59.9999999Z",
                "9999-12-31T23:59:59.9999999Z",
            ),
            // 100 ns ticks: the rest is truncated, not rounded.
            (
                "2020-02-29T12:00:00.99999999Z",
                "2020-02-29T12:00:00.9999999Z",
            ),
        ];
        for (input, output) in cases {
            assert_eq!(graph(input).as_deref(), Some(output), "{input}");
        }
        assert_eq!(Instant::NEVER.to_graph(), "0001-01-01T00:00:00.0000000Z");
    }

    #[test]
    fn refuses_what_is_not_a_date_time_offset() {
        for bad in [
            "2017-01-01T00:02:58",
            "2017-01-01 00:02:58Z",
            "2017-01-01X00:02:58Z",
            "2017-01-01T00:02:58.Z",
            "2017-01-01T00:02:58.1234567890123Z",
            "2017-02-30T00:00:00Z",
            "2017-01-01T24:00:00Z",
            "2017-01-01T00:00:00+24:00",
            "0000-12-31T23:00:00Z",
            "0001-01-01T00:30:00+01:00",
            "9999-12-31T23:30:00-01:00",
            "yesterday",
            "",
            "2017-01-01T00:02:58Zjunk",
        ] {
            assert_eq!(graph(bad), None, "{bad}");
        }
    }
}
