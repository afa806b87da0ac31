//! Who a call is for, read from the Graph token's claims (not verified here:
//! Graph verifies the token; the claims only scope the gateway's own state).

use std::hash::{DefaultHasher, Hash, Hasher};

use base64::Engine;
use http::HeaderValue;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Claims {
    tid: Option<String>,
    oid: Option<String>,
    appid: Option<String>,
    azp: Option<String>,
}

/// The longest claim value used (real ones are GUIDs).
const MAX_CLAIM: usize = 64;

fn claims(authorization: &HeaderValue) -> Option<Claims> {
    let text = authorization.to_str().ok()?;
    let token = text.rsplit(' ').next()?;
    let payload = token.split('.').nth(1)?;
    if payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn clean(value: Option<String>) -> Option<String> {
    value.filter(|v| {
        !v.is_empty()
            && v.len() <= MAX_CLAIM
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// The tenant of a token (`tid`), or `default` for a token without one
/// (such callers share one tenant's write budget).
pub fn tenant(authorization: &HeaderValue) -> String {
    claims(authorization)
        .and_then(|c| clean(c.tid))
        .unwrap_or_else(|| "default".to_owned())
}

/// The caller: `tenant/object id` (a user or managed identity) or
/// `tenant/app id`, so a refreshed token keeps its identity; a token that is
/// not a JWT with those claims falls back to a hash of the token.
pub fn caller(authorization: &HeaderValue) -> String {
    let c = claims(authorization).unwrap_or_default();
    if let Some(tid) = clean(c.tid) {
        if let Some(who) = clean(c.oid) {
            return format!("{tid}/oid:{who}");
        }
        if let Some(app) = clean(c.appid).or(clean(c.azp)) {
            return format!("{tid}/app:{app}");
        }
    }
    let mut h = DefaultHasher::new();
    authorization.as_bytes().hash(&mut h);
    format!("token:{:016x}", h.finish())
}

#[cfg(test)]
pub(crate) fn test_token(claims: &str) -> HeaderValue {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "Bearer {}.{}.sig",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(claims)
    )
    .parse()
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tenant_and_object_or_app_id() {
        let t = test_token(r#"{"tid":"t1","oid":"o1","appid":"a1","exp":1}"#);
        assert_eq!(tenant(&t), "t1");
        assert_eq!(caller(&t), "t1/oid:o1");
        // A refreshed token (other expiry) is the same caller.
        let t2 = test_token(r#"{"tid":"t1","oid":"o1","appid":"a1","exp":2}"#);
        assert_eq!(caller(&t2), caller(&t));
        let app = test_token(r#"{"tid":"t1","azp":"a2"}"#);
        assert_eq!(caller(&app), "t1/app:a2");
    }

    #[test]
    fn opaque_or_odd_tokens_fall_back_to_a_hash() {
        let opaque: HeaderValue = "Bearer not-a-jwt".parse().unwrap();
        assert_eq!(tenant(&opaque), "default");
        assert!(caller(&opaque).starts_with("token:"));
        let other: HeaderValue = "Bearer another".parse().unwrap();
        assert_ne!(caller(&opaque), caller(&other));
        // Claims with separators cannot forge another caller's scope.
        let odd = test_token(r#"{"tid":"t1/oid:x","oid":"y"}"#);
        assert!(caller(&odd).starts_with("token:"));
        assert_eq!(tenant(&odd), "default");
    }
}
