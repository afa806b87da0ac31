//! Logging: `tracing` to stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`; an invalid value stops startup). Tokens are never logged:
//! they live in sensitive header values and in `config::Secret`, whose `Debug`
//! output is redacted.
//!
//! Lines reach stderr through a bounded queue drained by a thread of its
//! own (tracing-appender's lossy non-blocking writer), so nothing serving a
//! call waits on stderr: when the reader of stderr stalls and the queue is
//! full, new lines are dropped and counted (`runstate_log_lines_dropped_total`).
//!
//! Text lines cannot be forged: every field value, the message included, is
//! written with control characters escaped (`\n`, `\r`, `\u{1b}`...), so
//! caller or Graph text (names, masks, error messages) stays on its line.
//! JSON lines are escaped by the JSON encoder.

use std::{fmt::Write as _, sync::OnceLock};

use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter,
    field::{MakeVisitor, VisitFmt, VisitOutput},
    fmt,
    fmt::format::Writer,
};

use crate::config::{LogFormat, Refusal};

/// Log lines queued for stderr at most, by default (`--log-buffer-lines`).
pub const DEFAULT_BUFFER_LINES: usize = 4096;

/// Lines dropped because the queue to stderr was full, once logging is set up.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber, writing through a queue of at most
/// `buffer_lines` lines. Keep the guard for the life of the process: when
/// dropped, it flushes the queue (waiting at most about a second).
/// A second call installs nothing. Fails when `RUST_LOG` is set but is not
/// a valid filter.
pub fn init(format: LogFormat, buffer_lines: usize) -> anyhow::Result<WorkerGuard> {
    let filter = filter_from(std::env::var_os("RUST_LOG").as_deref())?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(buffer_lines.max(1))
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.fmt_fields(EscapedFields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() {
        let _ = DROPPED.set(dropped);
    }
    Ok(guard)
}

/// Lines dropped so far because stderr did not keep up (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// The filter for a `RUST_LOG` value: `info` when unset or blank, an error
/// naming `RUST_LOG` when it does not parse.
pub fn filter_from(rust_log: Option<&std::ffi::OsStr>) -> anyhow::Result<EnvFilter> {
    let Some(value) = rust_log else {
        return Ok(EnvFilter::new("info"));
    };
    let Some(text) = value.to_str() else {
        return Err(Refusal::error("RUST_LOG is not valid UTF-8"));
    };
    if text.trim().is_empty() {
        return Ok(EnvFilter::new("info"));
    }
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| Refusal::error(format!("RUST_LOG={text:?} is not a valid log filter: {e}")))
}

/// Formats text-log fields as `name=value` with control characters escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'a> MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapedVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        EscapedVisitor {
            writer: target,
            first: true,
            result: Ok(()),
        }
    }
}

/// The visitor behind [`EscapedFields`].
pub struct EscapedVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: std::fmt::Result,
}

impl EscapedVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str, quote: bool) {
        if self.result.is_err() {
            return;
        }
        let mut line = String::with_capacity(value.len() + field.name().len() + 4);
        if !self.first {
            line.push(' ');
        }
        self.first = false;
        let name = field.name();
        let is_message = name == "message";
        if !is_message {
            // `r#type` fields are recorded with their raw-identifier prefix.
            line.push_str(name.strip_prefix("r#").unwrap_or(name));
            line.push('=');
        }
        let quote = quote && !is_message;
        if quote {
            line.push('"');
        }
        escape_into(&mut line, value, quote);
        if quote {
            line.push('"');
        }
        self.result = self.writer.write_str(&line);
    }
}

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let quote = value.is_empty() || value.contains([' ', '"', '=']);
        self.write(field, value, quote);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &value.to_string(), true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        // A `?string` is already quoted and escaped by `Debug`, but a
        // `%value` is raw text, so it is escaped here, and quoted when it
        // could pass for more fields.
        let already_quoted = text.len() >= 2 && text.starts_with('"') && text.ends_with('"');
        let quote = !already_quoted && (text.is_empty() || text.contains([' ', '"', '=']));
        self.write(field, &text, quote);
    }
}

impl VisitOutput<std::fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

/// Appends `value` with control characters (and, inside quotes, `"` and `\`)
/// escaped, so it cannot end the line or fake another field.
pub fn escape_into(out: &mut String, value: &str, quoted: bool) {
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' | '\\' if quoted => {
                out.push('\\');
                out.push(c);
            }
            // C0/C1 controls (ESC starts terminal sequences), and the Unicode
            // line and paragraph separators.
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn unset_or_blank_rust_log_means_info() {
        assert_eq!(filter_from(None).unwrap().to_string(), "info");
        assert_eq!(
            filter_from(Some(OsStr::new("  "))).unwrap().to_string(),
            "info"
        );
    }

    #[test]
    fn valid_rust_log_is_used() {
        let f = filter_from(Some(OsStr::new("warn,runstate_gateway=debug"))).unwrap();
        let text = f.to_string();
        assert!(
            text.contains("runstate_gateway=debug") && text.contains("warn"),
            "{text}"
        );
    }

    #[test]
    fn invalid_rust_log_is_an_error_naming_it() {
        for bad in ["info,x=loud", "[", "=info", "a[b{"] {
            let err = filter_from(Some(OsStr::new(bad))).unwrap_err().to_string();
            assert!(err.starts_with("RUST_LOG="), "{bad}: {err}");
        }
    }

    fn escaped(s: &str, quoted: bool) -> String {
        let mut out = String::new();
        escape_into(&mut out, s, quoted);
        out
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("a\nb\rc", false), "a\\nb\\rc");
        assert_eq!(escaped("\u{1b}[31mred", false), "\\u{1b}[31mred");
        assert_eq!(escaped("say \"hi\"\\", true), "say \\\"hi\\\"\\\\");
        assert_eq!(escaped("x\u{2028}y", false), "x\\u{2028}y");
        assert_eq!(escaped("plain text", false), "plain text");
    }
}
