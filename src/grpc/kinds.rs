//! The three resource kinds, declared once: each line of the table below
//! names a kind's messages, fields and resource names, and the macro writes
//! its RPCs from the shapes in `ops`, `list`, `delete` and `batch`. Adding
//! an RPC of an existing shape touches only this table.

use prost::Message;
use tonic::{Request, Response, Status};

use super::{
    RunStateApi,
    batch::{ItemFields, rpc_status},
    list::List,
    ops::{Create, fingerprint, respond},
    stream,
};
use crate::convert::{
    names::{
        ComplianceScriptName, ComplianceStateName, DeviceStateName, DeviceStateParent, ScriptName,
        UserStateName,
    },
    query::Filterable,
};
use crate::pb::{self, longrunning as lro, run_state_service_server::RunStateService};

/// A unary RPC as the server's gate sees it: its name (a bounded metric
/// label) and the resource its request names (for the call's log line).
pub(crate) struct Rpc {
    pub name: &'static str,
    pub resource: fn(&[u8]) -> Result<String, prost::DecodeError>,
}

/// The RPCs of `google.longrunning.Operations`, with the operation each names.
pub(crate) const OPERATIONS: &[Rpc] = operations![
    GetOperationRequest,
    ListOperationsRequest,
    WaitOperationRequest,
    CancelOperationRequest,
    DeleteOperationRequest,
];

macro_rules! operations {
    ($($Req:ident),* $(,)?) => {
        &[$(Rpc {
            name: rpc_name(stringify!($Req)),
            resource: |b| Ok(lro::$Req::decode(b)?.name),
        }),*]
    };
}
use operations;

/// An RPC's name from its request message's: `GetXRequest` is `GetX`.
const fn rpc_name(request: &'static str) -> &'static str {
    request.split_at(request.len() - "Request".len()).0
}

macro_rules! service {
    (
        $(
            kind $R:ident {
                field: $field:ident,
                id_field: $id_field:ident,
                parent: $P:ty,
                name: $N:ty,
                filter: $filter:expr,
                create: $create:ident($CreateReq:ident),
                get: $get:ident($GetReq:ident),
                update: $update:ident($UpdateReq:ident),
                delete: $delete:ident($DeleteReq:ident),
                list: $list:ident($ListReq:ident -> $ListResp:ident, $items:ident, $list_rpc:literal),
                $( batch: $batch:ident($BatchReq:ident -> $BatchResp:ident, $Result:ident, $result:ident), )?
            }
        )*
        extra { streaming: [$($streaming:ident),*] unary: [$($other:expr),*] $($extra:tt)* }
    ) => {
        /// Every unary RPC of the service, with the resource its request names.
        pub(crate) const UNARY: &[Rpc] = &[
            $(
                Rpc { name: rpc_name(stringify!($CreateReq)), resource: |b| Ok(pb::$CreateReq::decode(b)?.parent) },
                Rpc { name: rpc_name(stringify!($GetReq)), resource: |b| Ok(pb::$GetReq::decode(b)?.name) },
                Rpc {
                    name: rpc_name(stringify!($UpdateReq)),
                    resource: |b| Ok(pb::$UpdateReq::decode(b)?.$field.map(|r| r.name).unwrap_or_default()),
                },
                Rpc { name: rpc_name(stringify!($DeleteReq)), resource: |b| Ok(pb::$DeleteReq::decode(b)?.name) },
                Rpc { name: rpc_name(stringify!($ListReq)), resource: |b| Ok(pb::$ListReq::decode(b)?.parent) },
                $( Rpc { name: rpc_name(stringify!($BatchReq)), resource: |b| Ok(pb::$BatchReq::decode(b)?.parent) }, )?
            )*
            $($other,)*
        ];

        /// Every client-streaming RPC of the service.
        pub(crate) const STREAMING: &[&str] = &[$(rpc_name(stringify!($streaming))),*];

        #[tonic::async_trait]
        impl RunStateService for RunStateApi {
            $(
                async fn $create(
                    &self,
                    request: Request<pb::$CreateReq>,
                ) -> Result<Response<pb::$R>, Status> {
                    let (metadata, _, req) = request.into_parts();
                    let create = Create {
                        fingerprint: fingerprint(&req, &req.request_id),
                        parent: <$P>::parse(&req.parent),
                        resource: req.$field,
                        id_field: stringify!($id_field),
                        id: &req.$id_field,
                        request_id: &req.request_id,
                    };
                    self.create(metadata, create).await
                }

                async fn $get(
                    &self,
                    request: Request<pb::$GetReq>,
                ) -> Result<Response<pb::$R>, Status> {
                    let (metadata, _, req) = request.into_parts();
                    self.get(metadata, &req.name, <$N>::parse).await
                }

                async fn $update(
                    &self,
                    request: Request<pb::$UpdateReq>,
                ) -> Result<Response<pb::$R>, Status> {
                    let (metadata, _, req) = request.into_parts();
                    self.update(metadata, req.$field, <$N>::parse, req.update_mask)
                        .await
                }

                async fn $delete(
                    &self,
                    request: Request<pb::$DeleteReq>,
                ) -> Result<Response<()>, Status> {
                    let (metadata, _, req) = request.into_parts();
                    self.delete(&metadata, &req.name, <$N>::parse, req.allow_missing)
                        .await
                }

                async fn $list(
                    &self,
                    request: Request<pb::$ListReq>,
                ) -> Result<Response<pb::$ListResp>, Status> {
                    let (metadata, _, req) = request.into_parts();
                    let l = List {
                        rpc: $list_rpc,
                        parent: <$P>::parse(&req.parent),
                        page_size: req.page_size,
                        page_token: &req.page_token,
                        filter: &req.filter,
                        filterable: $filter,
                        read_mask: req.read_mask.as_ref(),
                    };
                    let page = self.list::<_, pb::$R>(&metadata, l).await?;
                    Ok(respond(
                        pb::$ListResp {
                            $items: page.items,
                            next_page_token: page.next_page_token,
                        },
                        page.graph_request_id,
                    ))
                }

                $(
                    async fn $batch(
                        &self,
                        request: Request<pb::$BatchReq>,
                    ) -> Result<Response<pb::$BatchResp>, Status> {
                        let (metadata, _, req) = request.into_parts();
                        let results = self
                            .batch_create(
                                metadata,
                                &req.parent,
                                req.requests,
                                <$P>::parse,
                                |r| ItemFields {
                                    parent: &mut r.parent,
                                    request_id: &r.request_id,
                                    id: &r.$id_field,
                                    resource: &mut r.$field,
                                },
                                stringify!($id_field),
                            )
                            .await?;
                        use pb::$result::Result as Item;
                        Ok(Response::new(pb::$BatchResp {
                            results: results
                                .into_iter()
                                .map(|r| pb::$Result {
                                    result: Some(match r {
                                        Ok(state) => Item::$R(state),
                                        Err(s) => Item::Status(rpc_status(&s)),
                                    }),
                                })
                                .collect(),
                        }))
                    }
                )?
            )*

            $($extra)*
        }
    };
}

service! {
    kind ScriptUserState {
        field: script_user_state,
        id_field: script_user_state_id,
        parent: ScriptName,
        name: UserStateName,
        filter: Filterable::Text { proto: "user_principal_name", graph: "userPrincipalName" },
        create: create_script_user_state(CreateScriptUserStateRequest),
        get: get_script_user_state(GetScriptUserStateRequest),
        update: update_script_user_state(UpdateScriptUserStateRequest),
        delete: delete_script_user_state(DeleteScriptUserStateRequest),
        list: list_script_user_states(ListScriptUserStatesRequest -> ListScriptUserStatesResponse, script_user_states, "ListScriptUserStates"),
    }
    kind ScriptDeviceState {
        field: script_device_state,
        id_field: script_device_state_id,
        parent: DeviceStateParent,
        name: DeviceStateName,
        filter: Filterable::RunState { proto: "run_state", graph: "runState" },
        create: create_script_device_state(CreateScriptDeviceStateRequest),
        get: get_script_device_state(GetScriptDeviceStateRequest),
        update: update_script_device_state(UpdateScriptDeviceStateRequest),
        delete: delete_script_device_state(DeleteScriptDeviceStateRequest),
        list: list_script_device_states(ListScriptDeviceStatesRequest -> ListScriptDeviceStatesResponse, script_device_states, "ListScriptDeviceStates"),
        batch: batch_create_script_device_states(BatchCreateScriptDeviceStatesRequest -> BatchCreateScriptDeviceStatesResponse, ScriptDeviceStateResult, script_device_state_result),
    }
    kind ComplianceScriptDeviceState {
        field: compliance_script_device_state,
        id_field: compliance_script_device_state_id,
        parent: ComplianceScriptName,
        name: ComplianceStateName,
        filter: Filterable::RunState { proto: "detection_state", graph: "detectionState" },
        create: create_compliance_script_device_state(CreateComplianceScriptDeviceStateRequest),
        get: get_compliance_script_device_state(GetComplianceScriptDeviceStateRequest),
        update: update_compliance_script_device_state(UpdateComplianceScriptDeviceStateRequest),
        delete: delete_compliance_script_device_state(DeleteComplianceScriptDeviceStateRequest),
        list: list_compliance_script_device_states(ListComplianceScriptDeviceStatesRequest -> ListComplianceScriptDeviceStatesResponse, compliance_script_device_states, "ListScriptDeviceStates"),
        batch: batch_create_compliance_script_device_states(BatchCreateComplianceScriptDeviceStatesRequest -> BatchCreateComplianceScriptDeviceStatesResponse, ComplianceScriptDeviceStateResult, compliance_script_device_state_result),
    }
    extra {
        streaming: [StreamCreateScriptDeviceStatesRequest]
        unary: [Rpc {
            name: rpc_name(stringify!(SubmitRunStatesRequest)),
            resource: |b| pb::SubmitRunStatesRequest::decode(b).map(|_| String::new()),
        }]

        type StreamCreateScriptDeviceStatesStream = stream::AnswerStream;

        async fn stream_create_script_device_states(
            &self,
            request: Request<tonic::Streaming<pb::StreamCreateScriptDeviceStatesRequest>>,
        ) -> Result<Response<Self::StreamCreateScriptDeviceStatesStream>, Status> {
            self.stream_create_device_states(request).await
        }

        async fn submit_run_states(
            &self,
            request: Request<pb::SubmitRunStatesRequest>,
        ) -> Result<Response<pb::longrunning::Operation>, Status> {
            self.submit_run_states(request).await
        }
    }
}
