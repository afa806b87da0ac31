//! The gRPC service: one file per resource, the shared shapes in `ops`.

pub mod codec;
mod compliance_states;
pub mod context;
mod device_states;
pub mod idempotency;
mod ops;
pub mod status;
mod user_states;

use std::time::Duration;

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
    request_ids: std::sync::Arc<idempotency::RequestIds>,
    /// Where tokens come from (`--auth`); without it, [`Self::token`] as before.
    auth: Option<std::sync::Arc<crate::auth::Authorizer>>,
}

impl RunStateApi {
    pub fn new(graph: GraphClient, token: Option<HeaderValue>, default_timeout: Duration) -> Self {
        Self {
            graph,
            token,
            default_timeout,
            request_ids: Default::default(),
            auth: None,
        }
    }

    /// Keeps request-id records in `records` (shared with batch handlers,
    /// and through Redis with other replicas).
    pub fn with_request_ids(mut self, records: std::sync::Arc<idempotency::RequestIds>) -> Self {
        self.request_ids = records;
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
