//! The gRPC service: one file per resource, the shared shapes in `ops`.

pub mod batch;
pub mod codec;
mod compliance_states;
pub mod context;
mod delete;
mod device_states;
mod idempotency;
mod list;
mod ops;
pub mod status;
mod stream;
mod user_states;

use std::time::Duration;

use http::HeaderValue;
use tonic::{Request, Response, Status};

use crate::convert::page_token::PageTokens;
use crate::graph::GraphClient;
use crate::pb::{self, run_state_service_server::RunStateService};

/// The `intune.runstates.v1.RunStateService` implementation.
pub struct RunStateApi {
    graph: GraphClient,
    /// The static Graph token, used when a caller sends none.
    token: Option<HeaderValue>,
    /// Deadline for calls that carry no `grpc-timeout`.
    default_timeout: Duration,
    request_ids: idempotency::RequestIds,
    /// Seals and opens the List RPCs' page tokens.
    page_tokens: PageTokens,
    /// Limits of the Batch and Stream RPCs.
    bulk: batch::BulkLimits,
}

impl RunStateApi {
    pub fn new(graph: GraphClient, token: Option<HeaderValue>, default_timeout: Duration) -> Self {
        Self {
            graph,
            token,
            default_timeout,
            request_ids: Default::default(),
            page_tokens: PageTokens::random()
                .unwrap_or_else(|_| PageTokens::from_secret(&uuid::Uuid::new_v4().to_string())),
            bulk: Default::default(),
        }
    }

    /// Uses these page tokens (a configured key) instead of a random key.
    pub fn with_page_tokens(mut self, page_tokens: PageTokens) -> Self {
        self.page_tokens = page_tokens;
        self
    }

    /// Sets the limits of the Batch and Stream RPCs.
    pub fn with_bulk_limits(mut self, limits: batch::BulkLimits) -> Self {
        self.bulk = limits;
        self
    }
}

/// Logs the outcome of one RPC: failures at info, successes at debug.
///
/// Called after the handler's future is awaited in place: wrapping it in
/// another `async fn` would store the (large) future twice.
fn log_outcome<T>(
    rpc: &'static str,
    started: std::time::Instant,
    result: &Result<Response<T>, Status>,
) {
    let elapsed_us = started.elapsed().as_micros() as u64;
    let (metadata, failure) = match result {
        Ok(r) => (r.metadata(), None),
        Err(s) => (s.metadata(), Some(s)),
    };
    let graph_request_id = metadata
        .get(status::GRAPH_REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    match failure {
        None => tracing::debug!(rpc, elapsed_us, graph_request_id, "ok"),
        Some(s) => {
            tracing::info!(rpc, elapsed_us, code = ?s.code(), message = s.message(), graph_request_id, "failed")
        }
    }
}

/// Runs a handler and logs its outcome.
macro_rules! observed {
    ($rpc:literal, $call:expr) => {{
        let started = std::time::Instant::now();
        let result = $call.await;
        log_outcome($rpc, started, &result);
        result
    }};
}

#[tonic::async_trait]
impl RunStateService for RunStateApi {
    async fn create_script_user_state(
        &self,
        request: Request<pb::CreateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        observed!("CreateScriptUserState", self.create_user_state(request))
    }

    async fn update_script_user_state(
        &self,
        request: Request<pb::UpdateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        observed!("UpdateScriptUserState", self.update_user_state(request))
    }

    async fn get_script_user_state(
        &self,
        request: Request<pb::GetScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        observed!("GetScriptUserState", self.get_user_state(request))
    }

    async fn create_script_device_state(
        &self,
        request: Request<pb::CreateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        observed!("CreateScriptDeviceState", self.create_device_state(request))
    }

    async fn update_script_device_state(
        &self,
        request: Request<pb::UpdateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        observed!("UpdateScriptDeviceState", self.update_device_state(request))
    }

    async fn get_script_device_state(
        &self,
        request: Request<pb::GetScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        observed!("GetScriptDeviceState", self.get_device_state(request))
    }

    async fn create_compliance_script_device_state(
        &self,
        request: Request<pb::CreateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        observed!(
            "CreateComplianceScriptDeviceState",
            self.create_compliance_state(request)
        )
    }

    async fn update_compliance_script_device_state(
        &self,
        request: Request<pb::UpdateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        observed!(
            "UpdateComplianceScriptDeviceState",
            self.update_compliance_state(request)
        )
    }

    async fn get_compliance_script_device_state(
        &self,
        request: Request<pb::GetComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        observed!(
            "GetComplianceScriptDeviceState",
            self.get_compliance_state(request)
        )
    }

    async fn list_script_user_states(
        &self,
        request: Request<pb::ListScriptUserStatesRequest>,
    ) -> Result<Response<pb::ListScriptUserStatesResponse>, Status> {
        observed!("ListScriptUserStates", self.list_user_states(request))
    }

    async fn delete_script_user_state(
        &self,
        request: Request<pb::DeleteScriptUserStateRequest>,
    ) -> Result<Response<()>, Status> {
        observed!("DeleteScriptUserState", self.delete_user_state(request))
    }

    async fn list_script_device_states(
        &self,
        request: Request<pb::ListScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::ListScriptDeviceStatesResponse>, Status> {
        observed!("ListScriptDeviceStates", self.list_device_states(request))
    }

    async fn delete_script_device_state(
        &self,
        request: Request<pb::DeleteScriptDeviceStateRequest>,
    ) -> Result<Response<()>, Status> {
        observed!("DeleteScriptDeviceState", self.delete_device_state(request))
    }

    async fn batch_create_script_device_states(
        &self,
        request: Request<pb::BatchCreateScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::BatchCreateScriptDeviceStatesResponse>, Status> {
        observed!(
            "BatchCreateScriptDeviceStates",
            self.batch_create_device_states(request)
        )
    }

    type StreamCreateScriptDeviceStatesStream = stream::AnswerStream;

    async fn stream_create_script_device_states(
        &self,
        request: Request<tonic::Streaming<pb::StreamCreateScriptDeviceStatesRequest>>,
    ) -> Result<Response<Self::StreamCreateScriptDeviceStatesStream>, Status> {
        observed!(
            "StreamCreateScriptDeviceStates",
            self.stream_create_device_states(request)
        )
    }

    async fn list_compliance_script_device_states(
        &self,
        request: Request<pb::ListComplianceScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::ListComplianceScriptDeviceStatesResponse>, Status> {
        observed!(
            "ListComplianceScriptDeviceStates",
            self.list_compliance_states(request)
        )
    }

    async fn delete_compliance_script_device_state(
        &self,
        request: Request<pb::DeleteComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<()>, Status> {
        observed!(
            "DeleteComplianceScriptDeviceState",
            self.delete_compliance_state(request)
        )
    }

    async fn batch_create_compliance_script_device_states(
        &self,
        request: Request<pb::BatchCreateComplianceScriptDeviceStatesRequest>,
    ) -> Result<Response<pb::BatchCreateComplianceScriptDeviceStatesResponse>, Status> {
        observed!(
            "BatchCreateComplianceScriptDeviceStates",
            self.batch_create_compliance_states(request)
        )
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
        let api = super::RunStateApi::new(graph, None, std::time::Duration::from_secs(1));
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
