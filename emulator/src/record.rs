//! The bounded record of requests the emulator received.

use std::{
    collections::VecDeque,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use super::{RECORD_BODY_BYTES, RECORD_LIMIT, RECORD_TOTAL_BYTES};

/// The recorded requests and the bytes they hold.
#[derive(Default)]
pub struct Record {
    entries: VecDeque<Recorded>,
    bytes: usize,
}

impl Record {
    /// Adds an entry, dropping the oldest to stay within [`RECORD_LIMIT`]
    /// entries and [`RECORD_TOTAL_BYTES`].
    pub fn push(&mut self, entry: Recorded) {
        let size = entry.size();
        while self.entries.len() >= RECORD_LIMIT || self.bytes + size > RECORD_TOTAL_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.size(),
                None => break,
            }
        }
        self.bytes += size;
        self.entries.push_back(entry);
    }

    pub fn entries(&self) -> impl Iterator<Item = &Recorded> {
        self.entries.iter()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A request the emulator received (with a valid-looking token). The
/// `authorization` header is kept for in-process tests, but redacted in
/// `Debug` and over HTTP ([`Recorded::redacted`]). Path, headers and body are
/// each cut at [`RECORD_BODY_BYTES`].
#[derive(Clone, Serialize)]
pub struct Recorded {
    pub method: String,
    /// The HTTP version, e.g. `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Path and query as sent (still percent-encoded).
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body, as text (invalid UTF-8 replaced), cut at [`RECORD_BODY_BYTES`].
    pub body: String,
    /// The body's length as received.
    pub body_len: usize,
    /// When it arrived, for measuring the pauses between requests.
    #[serde(skip)]
    pub received: Instant,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.redacted();
        f.debug_struct("Recorded")
            .field("method", &r.method)
            .field("version", &r.version)
            .field("path", &r.path)
            .field("headers", &r.headers)
            .field("body", &r.body)
            .finish()
    }
}

impl Recorded {
    /// A record of a request, each part cut at [`RECORD_BODY_BYTES`].
    pub fn new(
        method: &str,
        version: http::Version,
        path: &str,
        headers_in: &http::HeaderMap,
        body: &[u8],
    ) -> Recorded {
        let mut headers = Vec::new();
        let mut header_bytes = 0;
        for (k, v) in headers_in {
            header_bytes += k.as_str().len() + v.len();
            if header_bytes > RECORD_BODY_BYTES {
                break;
            }
            headers.push((k.as_str().to_owned(), text(v.as_bytes(), RECORD_BODY_BYTES)));
        }
        Recorded {
            method: text(method.as_bytes(), 16),
            version: format!("{version:?}"),
            path: text(path.as_bytes(), RECORD_BODY_BYTES),
            headers,
            body: text(body, RECORD_BODY_BYTES),
            body_len: body.len(),
            received: Instant::now(),
            received_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// A copy with the `authorization` value replaced by `***`.
    pub fn redacted(&self) -> Recorded {
        let mut r = self.clone();
        for (name, value) in &mut r.headers {
            if name == "authorization" {
                *value = "***".into();
            }
        }
        r
    }

    /// The first value of a header (names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    /// The bytes this record holds.
    pub fn size(&self) -> usize {
        self.method.len()
            + self.version.len()
            + self.path.len()
            + self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Text of at most `max` bytes from `bytes`. Invalid UTF-8 is replaced, and
/// the cut is made after that, so replacement characters (3 bytes each) do not
/// triple what is kept.
fn text(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
