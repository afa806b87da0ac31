//! The gRPC service: one file per resource, the shared shapes in `ops`.

mod compliance_states;
pub mod context;
mod device_states;
mod idempotency;
mod ops;
pub mod status;
mod user_states;

use std::{future::Future, time::Duration};

use http::HeaderValue;
use tonic::{Request, Response, Status};

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
}

impl RunStateApi {
    pub fn new(graph: GraphClient, token: Option<HeaderValue>, default_timeout: Duration) -> Self {
        Self {
            graph,
            token,
            default_timeout,
            request_ids: Default::default(),
        }
    }
}

/// Logs the outcome of one RPC: failures at info, successes at debug.
async fn observe<T>(
    rpc: &'static str,
    work: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let result = work.await;
    let elapsed_us = started.elapsed().as_micros() as u64;
    match &result {
        Ok(r) => {
            let graph_request_id = r
                .metadata()
                .get(status::GRAPH_REQUEST_ID)
                .and_then(|v| v.to_str().ok());
            tracing::debug!(rpc, elapsed_us, graph_request_id, "ok");
        }
        Err(s) => {
            let graph_request_id = s
                .metadata()
                .get(status::GRAPH_REQUEST_ID)
                .and_then(|v| v.to_str().ok());
            tracing::info!(rpc, elapsed_us, code = ?s.code(), message = s.message(), graph_request_id, "failed");
        }
    }
    result
}

#[tonic::async_trait]
impl RunStateService for RunStateApi {
    async fn create_script_user_state(
        &self,
        request: Request<pb::CreateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        observe("CreateScriptUserState", self.create_user_state(request)).await
    }

    async fn update_script_user_state(
        &self,
        request: Request<pb::UpdateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        observe("UpdateScriptUserState", self.update_user_state(request)).await
    }

    async fn get_script_user_state(
        &self,
        request: Request<pb::GetScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        observe("GetScriptUserState", self.get_user_state(request)).await
    }

    async fn create_script_device_state(
        &self,
        request: Request<pb::CreateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        observe("CreateScriptDeviceState", self.create_device_state(request)).await
    }

    async fn update_script_device_state(
        &self,
        request: Request<pb::UpdateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        observe("UpdateScriptDeviceState", self.update_device_state(request)).await
    }

    async fn get_script_device_state(
        &self,
        request: Request<pb::GetScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        observe("GetScriptDeviceState", self.get_device_state(request)).await
    }

    async fn create_compliance_script_device_state(
        &self,
        request: Request<pb::CreateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        observe(
            "CreateComplianceScriptDeviceState",
            self.create_compliance_state(request),
        )
        .await
    }

    async fn update_compliance_script_device_state(
        &self,
        request: Request<pb::UpdateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        observe(
            "UpdateComplianceScriptDeviceState",
            self.update_compliance_state(request),
        )
        .await
    }

    async fn get_compliance_script_device_state(
        &self,
        request: Request<pb::GetComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        observe(
            "GetComplianceScriptDeviceState",
            self.get_compliance_state(request),
        )
        .await
    }
}
