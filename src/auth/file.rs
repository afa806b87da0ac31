//! A static token read from a file and read again when the file changes
//! (a mounted Kubernetes secret is swapped in place).

use crate::config::Refusal;
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use http::HeaderValue;
use tokio::time::Instant;

use super::TokenError;

/// How often the file's metadata is looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub struct TokenFile {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    header: HeaderValue,
    stamp: (Option<SystemTime>, u64),
    checked: Instant,
}

fn stamp(path: &Path) -> std::io::Result<(Option<SystemTime>, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

fn read(path: &Path) -> Result<HeaderValue, TokenError> {
    let text = super::entra::read_trimmed(path, "--graph-token-file")?;
    super::bearer(&text).map_err(|_| {
        TokenError::Credential(format!(
            "--graph-token-file {}: not a valid header value",
            path.display()
        ))
    })
}

impl TokenFile {
    /// Reads the file now: a missing or empty file fails startup.
    pub fn open(path: &Path) -> Result<Self, Refusal> {
        let header = read(path).map_err(|e| e.to_string())?;
        let stamp =
            stamp(path).map_err(|e| format!("--graph-token-file {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new(State {
                header,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The current token, re-read when the file changed since it was last read.
    pub fn current(&self) -> Result<HeaderValue, TokenError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(state.checked) < CHECK_EVERY {
            return Ok(state.header.clone());
        }
        state.checked = now;
        match stamp(&self.path) {
            Ok(s) if s == state.stamp => {}
            Ok(s) => match read(&self.path) {
                Ok(header) => {
                    state.header = header;
                    state.stamp = s;
                    tracing::info!(path = %self.path.display(), "the Graph token file changed; using the new token");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-read the Graph token file; keeping the previous token")
                }
            },
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot look at the Graph token file; keeping the previous token")
            }
        }
        Ok(state.header.clone())
    }
}
