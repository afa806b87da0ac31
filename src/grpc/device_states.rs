//! RPCs on device run states of device-management, shell and custom-attribute
//! scripts, directly under a script or under one of its user run states.

use tonic::{Request, Response, Status};

use super::{
    RunStateApi,
    ops::{Create, fingerprint},
};
use crate::convert::names::{DeviceStateName, DeviceStateParent};
use crate::pb;

impl RunStateApi {
    pub(super) async fn create_device_state(
        &self,
        request: Request<pb::CreateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        let (metadata, _, req) = request.into_parts();
        let create = Create {
            fingerprint: fingerprint(&req, &req.request_id),
            parent: DeviceStateParent::parse(&req.parent),
            resource: req.script_device_state,
            id_field: "script_device_state_id",
            id: &req.script_device_state_id,
            request_id: &req.request_id,
        };
        self.create(metadata, create).await
    }

    pub(super) async fn update_device_state(
        &self,
        request: Request<pb::UpdateScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.update(
            metadata,
            req.script_device_state,
            DeviceStateName::parse,
            req.update_mask,
        )
        .await
    }

    pub(super) async fn get_device_state(
        &self,
        request: Request<pb::GetScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ScriptDeviceState>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.get(metadata, &req.name, DeviceStateName::parse).await
    }
}
