//! Chosen error answers.

use serde::{Deserialize, Serialize};

/// A chosen answer for matching requests, instead of (or after) the real one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fault {
    /// Only this method (e.g. `POST`); any when empty.
    pub method: Option<String>,
    /// Only paths containing this text; any when empty.
    pub path_contains: Option<String>,
    /// The HTTP status to answer.
    pub status: u16,
    /// Graph's error code (may be empty).
    pub code: String,
    pub message: String,
    /// A raw body instead of Graph's JSON error (an HTML page, say).
    pub raw_body: Option<String>,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    /// How many requests it answers; every one until cleared when `None`.
    pub times: Option<u32>,
    /// Apply the request first, then answer with the fault (a write whose
    /// answer was lost).
    pub after_apply: bool,
    /// Match every request: over HTTP, a fault needs a matcher or this.
    pub any: bool,
}

impl Fault {
    /// A Graph-shaped error answer with the given status.
    pub fn status(status: u16) -> Self {
        Fault {
            status,
            message: format!("Emulated error {status}"),
            ..Default::default()
        }
    }

    /// The error Graph gives for a route its metadata lists but it does not serve.
    pub fn unserved_route(method: &str) -> Self {
        Fault {
            method: Some(method.to_owned()),
            status: 400,
            code: "No method match route template".into(),
            message: format!(
                "No OData route exists that match template ~/singleton/navigation/key/navigation/key with http verb {method} for request."
            ),
            ..Default::default()
        }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }

    pub fn path_contains(mut self, text: &str) -> Self {
        self.path_contains = Some(text.to_owned());
        self
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = code.to_owned();
        self
    }

    pub fn message(mut self, message: &str) -> Self {
        self.message = message.to_owned();
        self
    }

    pub fn raw_body(mut self, content_type: &str, body: &str) -> Self {
        self.content_type = Some(content_type.to_owned());
        self.raw_body = Some(body.to_owned());
        self
    }

    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn after_apply(mut self) -> Self {
        self.after_apply = true;
        self
    }

    /// Checks a fault sent over HTTP: a real status, a matcher (or `any`),
    /// bounded text.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=599).contains(&self.status) {
            return Err(format!("status {} is not in 100-599", self.status));
        }
        let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        if empty(&self.method) && empty(&self.path_contains) && !self.any {
            return Err(
                "a fault needs \"method\" or \"path_contains\", or \"any\": true to match every request"
                    .into(),
            );
        }
        if self.times == Some(0) {
            return Err("times must be at least 1 (or absent for every request)".into());
        }
        Ok(())
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}
