//! Durations on the command line (a leaf: it imports nothing of the crate).

use std::time::Duration;

/// Parses `30s`, `500ms`, `2m`, `1h` or plain seconds, above zero and at
/// most a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_between(
        text,
        Duration::from_millis(1),
        Duration::from_secs(24 * 3600),
        "24h",
    )
}

/// Parses `7d`, `12h`, `30m`, `90s` or plain seconds, from 1 s to 3650 days
/// (`--operation-retention`).
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    parse_between(
        text,
        Duration::from_secs(1),
        Duration::from_secs(3650 * 86_400),
        "3650d",
    )
}

fn parse_between(
    text: &str,
    min: Duration,
    max: Duration,
    max_text: &str,
) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit (use ms, s, m, h or d)"
            ));
        }
    };
    if d.is_zero() {
        return Err("the duration must be above zero".into());
    }
    if d > max {
        return Err(format!("the duration must be at most {max_text}"));
    }
    if d < min {
        return Err(format!(
            "the duration must be at least {}ms",
            min.as_millis()
        ));
    }
    Ok(d)
}
