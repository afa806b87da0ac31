//! Durations on the command line (a leaf: it imports nothing of the crate).

use std::time::Duration;

/// Parses `30s`, `500ms`, `2m`, `1h` or plain seconds, above zero and at
/// most a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_up_to(text, Duration::from_secs(24 * 3600), "24h")
}

/// The longest `--operation-retention`.
pub const MAX_RETENTION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses `7d`, `12h`, `30m`, `90s` or plain seconds, above zero and at
/// most `max` (written `max_text`).
pub fn parse_up_to(text: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
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
    Ok(d)
}
