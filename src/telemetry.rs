//! Logging: `tracing` to stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`; an invalid value stops startup). Tokens are never logged:
//! they live in sensitive header values and in `config::Secret`, whose `Debug`
//! output is redacted.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber; a second call is a no-op. Fails when
/// `RUST_LOG` is set but is not a valid filter.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = filter_from(std::env::var_os("RUST_LOG").as_deref())?;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// The filter for a `RUST_LOG` value: `info` when unset or blank, an error
/// naming `RUST_LOG` when it does not parse.
pub fn filter_from(rust_log: Option<&std::ffi::OsStr>) -> anyhow::Result<EnvFilter> {
    let Some(value) = rust_log else {
        return Ok(EnvFilter::new("info"));
    };
    let Some(text) = value.to_str() else {
        anyhow::bail!("RUST_LOG is not valid UTF-8");
    };
    if text.trim().is_empty() {
        return Ok(EnvFilter::new("info"));
    }
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| anyhow::anyhow!("RUST_LOG={text:?} is not a valid log filter: {e}"))
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
}
