//! Azure managed identity: App Service's `IDENTITY_ENDPOINT` with its
//! `IDENTITY_HEADER`, else the instance metadata service (IMDS).

use super::{TokenError, cache::Fetched, entra};
use crate::config::Refusal;
use crate::config::Secret;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

enum Endpoint {
    AppService { url: String, header: Secret },
    Imds { url: String },
}

pub struct Managed {
    http: reqwest::Client,
    endpoint: Endpoint,
    host: String,
    /// Graph's root, e.g. `https://graph.microsoft.com`.
    resource: String,
    /// A user-assigned identity (`AZURE_CLIENT_ID`).
    client_id: Option<String>,
}

impl Managed {
    pub fn new(
        http: reqwest::Client,
        identity_endpoint: Option<&str>,
        identity_header: Option<Secret>,
        imds: &str,
        resource: &str,
        client_id: Option<String>,
    ) -> Result<Self, Refusal> {
        let endpoint = match (identity_endpoint, identity_header) {
            (Some(url), Some(header)) => Endpoint::AppService {
                url: url.to_owned(),
                header,
            },
            (Some(_), None) => {
                return Err("IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not".into());
            }
            (None, _) => Endpoint::Imds {
                url: format!(
                    "{}/metadata/identity/oauth2/token",
                    imds.trim_end_matches('/')
                ),
            },
        };
        let url = match &endpoint {
            Endpoint::AppService { url, .. } | Endpoint::Imds { url } => url,
        };
        let host = reqwest::Url::parse(url)
            .map_err(|e| format!("managed identity endpoint {url:?}: {e}"))?
            .host_str()
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            http,
            endpoint,
            host,
            resource: resource.to_owned(),
            client_id: client_id.filter(|c| !c.trim().is_empty()),
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, TokenError> {
        let mut query = format!(
            "resource={}",
            utf8_percent_encode(&self.resource, NON_ALPHANUMERIC)
        );
        if let Some(id) = &self.client_id {
            query.push_str(&format!(
                "&client_id={}",
                utf8_percent_encode(id, NON_ALPHANUMERIC)
            ));
        }
        let request = match &self.endpoint {
            Endpoint::AppService { url, header } => self
                .http
                .get(format!("{url}?api-version=2019-08-01&{query}"))
                .header("X-IDENTITY-HEADER", header.expose()),
            Endpoint::Imds { url } => self
                .http
                .get(format!("{url}?api-version=2018-02-01&{query}"))
                .header("Metadata", "true"),
        };
        let response = request
            .send()
            .await
            .map_err(|e| entra::unavailable(&self.host, &e))?;
        let secrets: Vec<&str> = match &self.endpoint {
            Endpoint::AppService { header, .. } => vec![header.expose()],
            Endpoint::Imds { .. } => Vec::new(),
        };
        entra::token_response(&self.host, response, &secrets).await
    }
}
