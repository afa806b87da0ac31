//! What a call carries besides its message: the Graph token and the deadline.
//! With `--auth`, [`crate::auth::Authorizer`] decides the token.

use std::time::Duration;

use http::HeaderValue;
use tonic::{Status, metadata::MetadataMap};

/// Where the Graph token comes from, in order: the caller's `authorization`
/// metadata (needed for delegated-only operations), else the static token.
pub fn authorization(
    metadata: &MetadataMap,
    fallback: Option<&HeaderValue>,
) -> Result<HeaderValue, Status> {
    if let Some(value) = metadata.get("authorization") {
        let text = value
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization metadata is not valid ASCII"))?
            .trim();
        if text.is_empty() {
            return Err(Status::unauthenticated(
                "the authorization metadata is empty",
            ));
        }
        return bearer(text).map_err(|_| {
            Status::unauthenticated("the authorization metadata is not a valid header value")
        });
    }
    fallback.cloned().ok_or_else(|| {
        Status::unauthenticated(
            "no Graph token: send `authorization: Bearer <token>` metadata, or start the gateway with --graph-token (GRAPH_TOKEN)",
        )
    })
}

/// An `Authorization` value: `Bearer <token>`, adding the scheme to a bare token.
pub fn bearer(token: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = if token.contains(' ') {
        HeaderValue::from_str(token)?
    } else {
        HeaderValue::from_str(&format!("Bearer {token}"))?
    };
    value.set_sensitive(true);
    Ok(value)
}

impl super::RunStateApi {
    /// The gateway's own Graph token (static, or from its credential), if
    /// it has one: a call without `authorization` metadata would use it.
    pub(crate) async fn own_token(&self) -> Option<HeaderValue> {
        self.authorize(&MetadataMap::new()).await.ok()
    }

    /// The `Authorization` value for this call: from `--auth` when set, else
    /// the caller's token or the static one.
    pub(super) async fn authorize(&self, metadata: &MetadataMap) -> Result<HeaderValue, Status> {
        match &self.auth {
            Some(auth) => {
                let wait = grpc_timeout(metadata).unwrap_or(self.default_timeout);
                let deadline =
                    tokio::time::Instant::now() + wait.min(Duration::from_secs(24 * 3600));
                // Boxed: a token fetch is a large future, rarely awaited,
                // and every call in flight would otherwise carry its room.
                Box::pin(auth.authorization(metadata, deadline)).await
            }
            None => authorization(metadata, self.token.as_ref()),
        }
    }
}

/// The caller's `grpc-timeout`, if it sent a valid one.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn caller_token_wins_over_static_one() {
        let fallback = bearer("static").unwrap();
        let got = authorization(&md(&[("authorization", "Bearer user")]), Some(&fallback)).unwrap();
        assert_eq!(got, "Bearer user");
        assert!(got.is_sensitive());
        let got = authorization(&md(&[]), Some(&fallback)).unwrap();
        assert_eq!(got, "Bearer static");
        let got = authorization(&md(&[("authorization", "raw-token")]), None).unwrap();
        assert_eq!(got, "Bearer raw-token");
    }

    #[test]
    fn no_token_is_unauthenticated_without_echoing_it() {
        let err = authorization(&md(&[]), None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = authorization(&md(&[("authorization", " ")]), None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn token_debug_output_is_redacted() {
        let v = bearer("s3cr3t-token").unwrap();
        assert!(!format!("{v:?}").contains("s3cr3t"));
    }

    #[test]
    fn parses_grpc_timeout_units() {
        let table = [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("10u", Some(Duration::from_micros(10))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("S", None),
            ("5s", None),
            ("123456789S", None),
            ("-5S", None),
        ];
        for (text, want) in table {
            assert_eq!(grpc_timeout(&md(&[("grpc-timeout", text)])), want, "{text}");
        }
        assert_eq!(grpc_timeout(&md(&[])), None);
    }
}
