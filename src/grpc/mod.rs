//! The gRPC service: thin adapters over the write engine. `kinds` declares
//! the three resource kinds once and writes their RPCs from the shapes in
//! `ops` (create, get, update), `list`, `delete` and `batch`; `stream` is
//! the streaming create.

mod batch;
pub(crate) mod codec;
pub(crate) mod context;
mod delete;
pub(crate) mod kinds;
mod list;
mod operations;
mod ops;
pub(crate) mod status;
mod stream;
pub(crate) mod submit;

use std::time::Duration;

use http::HeaderValue;

pub(crate) use batch::rpc_status;
pub(crate) use ops::create_status;

use crate::convert::page_token::PageTokens;
use crate::write::Engine;

/// The `intune.runstates.v1.RunStateService` implementation.
#[derive(Clone)]
pub(crate) struct RunStateApi {
    /// Every Graph request goes through the write engine.
    engine: Engine,
    /// The static Graph token, used when a caller sends none.
    token: Option<HeaderValue>,
    /// Deadline for calls that carry no `grpc-timeout`.
    default_timeout: Duration,
    /// Where tokens come from (`--auth`); without it, [`Self::token`] as before.
    auth: Option<std::sync::Arc<crate::auth::Authorizer>>,
    /// Seals and opens the List RPCs' page tokens.
    page_tokens: PageTokens,
    /// Items of one stream held at once (being created or awaiting sending).
    stream_window: usize,
    /// Where SubmitRunStates keeps writes (`--outbox`); none: FAILED_PRECONDITION.
    outbox: Option<std::sync::Arc<crate::outbox::Outbox>>,
}

impl RunStateApi {
    pub fn new(engine: Engine, token: Option<HeaderValue>, default_timeout: Duration) -> Self {
        Self {
            engine,
            token,
            default_timeout,
            auth: None,
            page_tokens: PageTokens::random()
                .unwrap_or_else(|_| PageTokens::from_secret(&uuid::Uuid::new_v4().to_string())),
            stream_window: 64,
            outbox: None,
        }
    }

    /// Uses these page tokens (a configured key) instead of a random key.
    pub fn with_page_tokens(mut self, page_tokens: PageTokens) -> Self {
        self.page_tokens = page_tokens;
        self
    }

    /// Holds at most `window` items of one stream at once.
    pub fn with_stream_window(mut self, window: usize) -> Self {
        self.stream_window = window.max(1);
        self
    }

    /// Accepts SubmitRunStates into `outbox` and serves its operations.
    pub fn with_outbox(mut self, outbox: std::sync::Arc<crate::outbox::Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// The write engine (the outbox's drain sends through it too).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Takes Graph tokens from `auth` (see `--auth`).
    pub fn with_auth(mut self, auth: std::sync::Arc<crate::auth::Authorizer>) -> Self {
        self.auth = Some(auth);
        self
    }
}

#[cfg(test)]
mod tests {
    /// Every in-flight call holds its handler's future: keep it small (it was
    /// 8.9 KB before the handlers stopped wrapping futures in `async fn`s).
    #[test]
    fn handler_futures_stay_small() {
        let graph =
            crate::graph::GraphClient::new("http://127.0.0.1:1/beta", Default::default()).unwrap();
        let engine = crate::write::Engine::new(
            graph,
            Default::default(),
            Default::default(),
            Default::default(),
        );
        let api = super::RunStateApi::new(engine, None, std::time::Duration::from_secs(1));
        use crate::pb::run_state_service_server::RunStateService;
        macro_rules! r {
            () => {
                tonic::Request::new(Default::default())
            };
        }
        let sizes = [
            std::mem::size_of_val(&*api.create_script_user_state(r!())),
            std::mem::size_of_val(&*api.create_script_device_state(r!())),
            std::mem::size_of_val(&*api.create_compliance_script_device_state(r!())),
            std::mem::size_of_val(&*api.update_script_user_state(r!())),
        ];
        assert!(sizes.iter().all(|s| *s < 4096), "{sizes:?}");
    }
}
