//! RPCs on device run states of compliance scripts.

use tonic::{Request, Response, Status};

use super::{
    RunStateApi,
    ops::{Create, fingerprint},
};
use crate::convert::names::{ComplianceScriptName, ComplianceStateName};
use crate::pb;

impl RunStateApi {
    pub(super) async fn create_compliance_state(
        &self,
        request: Request<pb::CreateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        let (metadata, _, req) = request.into_parts();
        let create = Create {
            fingerprint: fingerprint(&req, &req.request_id),
            parent: ComplianceScriptName::parse(&req.parent),
            resource: req.compliance_script_device_state,
            id_field: "compliance_script_device_state_id",
            id: &req.compliance_script_device_state_id,
            request_id: &req.request_id,
        };
        self.create(metadata, create).await
    }

    pub(super) async fn update_compliance_state(
        &self,
        request: Request<pb::UpdateComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.update(
            metadata,
            req.compliance_script_device_state,
            ComplianceStateName::parse,
            req.update_mask,
        )
        .await
    }

    pub(super) async fn get_compliance_state(
        &self,
        request: Request<pb::GetComplianceScriptDeviceStateRequest>,
    ) -> Result<Response<pb::ComplianceScriptDeviceState>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.get(metadata, &req.name, ComplianceStateName::parse)
            .await
    }
}
