//! RPCs on user run states of device-management, shell and custom-attribute scripts.

use tonic::{Request, Response, Status};

use super::{
    RunStateApi,
    ops::{Create, fingerprint},
};
use crate::convert::names::{ScriptName, UserStateName};
use crate::pb;

impl RunStateApi {
    pub(super) async fn create_user_state(
        &self,
        request: Request<pb::CreateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        let (metadata, _, req) = request.into_parts();
        let create = Create {
            fingerprint: fingerprint(&req, &req.request_id),
            parent: ScriptName::parse(&req.parent),
            resource: req.script_user_state,
            id_field: "script_user_state_id",
            id: &req.script_user_state_id,
            request_id: &req.request_id,
        };
        self.create(metadata, create).await
    }

    pub(super) async fn update_user_state(
        &self,
        request: Request<pb::UpdateScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.update(
            metadata,
            req.script_user_state,
            UserStateName::parse,
            req.update_mask,
        )
        .await
    }

    pub(super) async fn get_user_state(
        &self,
        request: Request<pb::GetScriptUserStateRequest>,
    ) -> Result<Response<pb::ScriptUserState>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.get(metadata, &req.name, UserStateName::parse).await
    }
}
