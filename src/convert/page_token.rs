//! Page tokens (AIP-158): opaque, tamper-proof wrappers of Graph's
//! `@odata.nextLink`.
//!
//! A token holds only the query of the next link (`$skiptoken=...`), sealed
//! with HMAC-SHA256 under a per-process (or configured) key together with the
//! query it belongs to: the RPC, the collection, the filter and the select.
//! The next page is fetched from the caller's own collection path with that
//! query, so a token can never make the gateway fetch another host or
//! another collection; a forged, cut or foreign token fails to open.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::Invalid;

type HmacSha256 = Hmac<Sha256>;

/// Format version, the first byte of a token.
const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// Longest token accepted (Graph's skip tokens are a few hundred bytes).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Seals and opens page tokens with one key.
#[derive(Clone)]
pub struct PageTokens {
    key: [u8; 32],
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(***)")
    }
}

/// What a token is bound to: the RPC and its query, except the page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding<'a> {
    pub rpc: &'a str,
    /// The encoded collection path, relative to `/deviceManagement/`.
    pub collection: &'a str,
    /// Graph's `$filter`, empty for none.
    pub filter: &'a str,
    /// Graph's `$select`, empty for none.
    pub select: &'a str,
}

impl Binding<'_> {
    fn feed(&self, mac: &mut HmacSha256) {
        for part in [self.rpc, self.collection, self.filter, self.select] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
    }
}

impl PageTokens {
    /// A fresh random key: tokens are valid in this process only.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Self { key })
    }

    /// A key derived from a configured secret, so that several replicas
    /// behind one load balancer accept each other's tokens.
    pub fn from_secret(secret: &str) -> Self {
        let mut key = [0u8; 32];
        key.copy_from_slice(&Sha256::digest(secret.as_bytes()));
        Self { key }
    }

    fn mac(&self, binding: &Binding<'_>, query: &str) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        binding.feed(&mut mac);
        mac.update(query.as_bytes());
        mac
    }

    /// Seals the query of Graph's next link. `root` is the client's
    /// `{base}/deviceManagement/`: a link elsewhere (another scheme, host,
    /// port or API root) is refused, as is one without a query.
    pub fn seal(
        &self,
        binding: &Binding<'_>,
        next_link: &str,
        root: &str,
    ) -> Result<String, BadNextLink> {
        let query = next_query(next_link, root)?;
        let tag = self.mac(binding, query).finalize().into_bytes();
        let mut raw = Vec::with_capacity(1 + MAC_LEN + query.len());
        raw.push(VERSION);
        raw.extend_from_slice(&tag);
        raw.extend_from_slice(query.as_bytes());
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Opens a token for this binding, giving the query of the next page.
    pub fn open(&self, binding: &Binding<'_>, token: &str) -> Result<String, Invalid> {
        const INVALID: &str = "is not a page token of this list (it is altered, truncated, expired by a restart, or from another query); start again without one";
        if token.len() > MAX_TOKEN_LEN {
            return Err(INVALID.into());
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| INVALID)?;
        if raw.len() <= 1 + MAC_LEN || raw[0] != VERSION {
            return Err(INVALID.into());
        }
        let (tag, query) = raw[1..].split_at(MAC_LEN);
        let query = std::str::from_utf8(query).map_err(|_| INVALID)?;
        self.mac(binding, query)
            .verify_slice(tag)
            .map_err(|_| INVALID)?;
        Ok(query.to_owned())
    }
}

/// Why Graph's `@odata.nextLink` cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Graph's @odata.nextLink {0}")]
pub struct BadNextLink(&'static str);

/// The query of a next link that lies under `root`.
fn next_query<'a>(next_link: &'a str, root: &str) -> Result<&'a str, BadNextLink> {
    let link = reqwest::Url::parse(next_link).map_err(|_| BadNextLink("is not a URL"))?;
    let base = reqwest::Url::parse(root)
        .map_err(|_| BadNextLink("is checked against no valid base URL"))?;
    let same_origin = link.scheme() == base.scheme()
        && link.host_str().map(str::to_ascii_lowercase)
            == base.host_str().map(str::to_ascii_lowercase)
        && link.port_or_known_default() == base.port_or_known_default();
    if !same_origin
        || !link
            .path()
            .to_ascii_lowercase()
            .starts_with(&base.path().to_ascii_lowercase())
    {
        return Err(BadNextLink("points outside the configured Graph URL"));
    }
    if link.fragment().is_some() {
        return Err(BadNextLink("has a fragment"));
    }
    let at = next_link.find('?').ok_or(BadNextLink("has no query"))?;
    let query = &next_link[at + 1..];
    if query.is_empty()
        || query.len() > MAX_TOKEN_LEN / 2
        || query
            .chars()
            .any(|c| c.is_control() || c == ' ' || c == '#')
    {
        return Err(BadNextLink("has an unusable query"));
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "https://graph.microsoft.com/beta/deviceManagement/";

    fn binding(collection: &str) -> Binding<'_> {
        Binding {
            rpc: "ListScriptDeviceStates",
            collection,
            filter: "",
            select: "",
        }
    }

    fn link(query: &str) -> String {
        format!("{ROOT}deviceManagementScripts/s/deviceRunStates?{query}")
    }

    #[test]
    fn round_trips_the_query_only() {
        let t = PageTokens::random().unwrap();
        let b = binding("deviceManagementScripts/s/deviceRunStates");
        let token = t.seal(&b, &link("$top=2&$skiptoken=abc"), ROOT).unwrap();
        assert!(!token.contains("skiptoken"), "opaque: {token}");
        assert_eq!(t.open(&b, &token).unwrap(), "$top=2&$skiptoken=abc");
    }

    #[test]
    fn refuses_forged_truncated_and_foreign_tokens() {
        let t = PageTokens::random().unwrap();
        let b = binding("deviceManagementScripts/s/deviceRunStates");
        let token = t.seal(&b, &link("$skiptoken=abc"), ROOT).unwrap();
        // Truncated, altered, garbage, empty-ish.
        assert!(t.open(&b, &token[..token.len() - 3]).is_err());
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(t.open(&b, &URL_SAFE_NO_PAD.encode(&raw)).is_err());
        for bad in ["", "x", "!!!!", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(t.open(&b, bad).is_err(), "{bad}");
        }
        // Another collection, filter, select or RPC.
        assert!(
            t.open(&binding("deviceShellScripts/s/deviceRunStates"), &token)
                .is_err()
        );
        let filtered = Binding {
            filter: "runState eq 'fail'",
            ..b.clone()
        };
        assert!(t.open(&filtered, &token).is_err());
        let selected = Binding {
            select: "id",
            ..b.clone()
        };
        assert!(t.open(&selected, &token).is_err());
        let other_rpc = Binding {
            rpc: "ListComplianceScriptDeviceStates",
            ..b.clone()
        };
        assert!(t.open(&other_rpc, &token).is_err());
        // Another key (another process).
        assert!(PageTokens::random().unwrap().open(&b, &token).is_err());
        // A configured key is shared.
        let a = PageTokens::from_secret("shared secret");
        let token = a.seal(&b, &link("$skiptoken=1"), ROOT).unwrap();
        assert!(
            PageTokens::from_secret("shared secret")
                .open(&b, &token)
                .is_ok()
        );
        assert!(PageTokens::from_secret("other").open(&b, &token).is_err());
    }

    #[test]
    fn seals_only_links_under_the_graph_root() {
        let t = PageTokens::random().unwrap();
        let b = binding("c");
        for bad in [
            "https://evil.example/beta/deviceManagement/x?$skiptoken=1",
            "http://graph.microsoft.com/beta/deviceManagement/x?$skiptoken=1",
            "https://graph.microsoft.com:8443/beta/deviceManagement/x?$skiptoken=1",
            "https://graph.microsoft.com/v1.0/deviceManagement/x?$skiptoken=1",
            "https://graph.microsoft.com/beta/deviceManagement/x",
            "https://graph.microsoft.com/beta/deviceManagement/x?",
            "not a url",
        ] {
            assert!(t.seal(&b, bad, ROOT).is_err(), "{bad}");
        }
        assert!(
            t.seal(
                &b,
                "https://GRAPH.microsoft.com/beta/deviceManagement/x?$skiptoken=1",
                ROOT
            )
            .is_ok()
        );
    }
}
