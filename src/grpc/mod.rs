//! The gRPC service: one file per resource, the shared shapes in `ops`.

mod batch;
pub(crate) mod codec;
mod compliance_states;
pub(crate) mod context;
mod delete;
mod device_states;
mod list;
mod ops;
pub(crate) mod status;
mod stream;
mod user_states;

use std::time::Duration;

use http::HeaderValue;
use tonic::{Request, Response, Status};

use crate::convert::page_token::PageTokens;
use crate::pb::{self, run_state_service_server::RunStateService};
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

    /// Takes Graph tokens from `auth` (see `--auth`).
    pub fn with_auth(mut self, auth: std::sync::Arc<crate::auth::Authorizer>) -> Self {
        self.auth = Some(auth);
        self
    }
}

#[tonic::async_trait]
impl RunStateService for RunStateApi {
    async fn create_script_user_state(
        &self,
        request: Request<pb::CreateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        self.create_user_state(request).await
    }

    async fn update_script_user_state(
        &self,
        request: Request<pb::UpdateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        self.update_user_state(request).await
    }

    async fn get_script_user_state(
        &self,
        request: Request<pb::GetScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        self.get_user_state(request).await
    }

    async fn create_script_device_state(
        &self,
        request: Request<pb::CreateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        self.create_device_state(request).await
    }

    async fn update_script_device_state(
        &self,
        request: Request<pb::UpdateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        self.update_device_state(request).await
    }

    async fn get_script_device_state(
        &self,
        request: Request<pb::GetScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        self.get_device_state(request).await
    }

    async fn create_compliance_script_device_state(
        &self,
        request: Request<pb::CreateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        self.create_compliance_state(request).await
    }

    async fn update_compliance_script_device_state(
        &self,
        request: Request<pb::UpdateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        self.update_compliance_state(request).await
    }

    async fn get_compliance_script_device_state(
        &self,
        request: Request<pb::GetComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        self.get_compliance_state(request).await
    }

    async fn list_script_user_states(
        &self,
        request: Request<pb::ListScriptUserStatesRequest>,
    ) -> Result<Response<pb::ListScriptUserStatesResponse>, Status> {
        self.list_user_states(request).await
    }

    async fn delete_script_user_state(
        &self,
        request: Request<pb::DeleteScriptUserStateRequest>,
    ) -> Result<Response<()>, Status> {
        self.delete_user_state(request).await
    }

    async fn list_script_device_states(
        &self,
        request: Request<pb::ListScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::ListScriptDeviceStatesResponse>, Status> {
        self.list_device_states(request).await
    }

    async fn delete_script_device_state(
        &self,
        request: Request<pb::DeleteScriptDeviceStateRequest>,
    ) -> Result<Response<()>, Status> {
        self.delete_device_state(request).await
    }

    async fn batch_create_script_device_states(
        &self,
        request: Request<pb::BatchCreateScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::BatchCreateScriptDeviceStatesResponse>, Status> {
        self.batch_create_device_states(request).await
    }

    type StreamCreateScriptDeviceStatesStream = stream::AnswerStream;

    async fn stream_create_script_device_states(
        &self,
        request: Request<tonic::Streaming<pb::StreamCreateScriptDeviceStatesRequest>>,
    ) -> Result<Response<Self::StreamCreateScriptDeviceStatesStream>, Status> {
        self.stream_create_device_states(request).await
    }

    async fn list_compliance_script_device_states(
        &self,
        request: Request<pb::ListComplianceScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::ListComplianceScriptDeviceStatesResponse>, Status> {
        self.list_compliance_states(request).await
    }

    async fn delete_compliance_script_device_state(
        &self,
        request: Request<pb::DeleteComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<()>, Status> {
        self.delete_compliance_state(request).await
    }

    async fn batch_create_compliance_script_device_states(
        &self,
        request: Request<pb::BatchCreateComplianceScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::BatchCreateComplianceScriptDeviceStatesResponse>, Status> {
        self.batch_create_compliance_states(request).await
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
        let engine = crate::write::Engine::new(graph, Default::default(), None, Default::default());
        let api = super::RunStateApi::new(engine, None, std::time::Duration::from_secs(1));
        let sizes = [
            std::mem::size_of_val(&api.create_user_state(tonic::Request::new(Default::default()))),
            std::mem::size_of_val(
                &api.create_device_state(tonic::Request::new(Default::default())),
            ),
            std::mem::size_of_val(
                &api.create_compliance_state(tonic::Request::new(Default::default())),
            ),
            std::mem::size_of_val(&api.update_user_state(tonic::Request::new(Default::default()))),
        ];
        assert!(sizes.iter().all(|s| *s < 4096), "{sizes:?}");
    }
}
