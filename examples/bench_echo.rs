//! A bare tonic server for the benchmark's gRPC floor (contender D): it answers
//! `CreateScriptUserState` from memory, with no upstream call, and every other
//! RPC with UNIMPLEMENTED. Same tonic server stack as the gateway, nothing else.
//!
//! Usage: `bench_echo --listen 127.0.0.1:PORT` (worker threads from
//! `TOKIO_WORKER_THREADS`, as for the gateway).

use std::net::SocketAddr;

use runstate_gateway::pb::{
    self,
    run_state_service_server::{RunStateService, RunStateServiceServer},
};
use tonic::{Request, Response, Status, transport::Server};

#[derive(Default)]
struct Echo;

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RunStateService for Echo {
    async fn create_script_user_state(
        &self,
        request: Request<pb::CreateScriptUserStateRequest>,
    ) -> Answer<pb::ScriptUserState> {
        let req = request.into_inner();
        let mut state = req.script_user_state.unwrap_or_default();
        state.id = "00000000-0000-0000-0000-000000000001".to_owned();
        state.name = format!("{}/userRunStates/{}", req.parent, state.id);
        Ok(Response::new(state))
    }

    async fn update_script_user_state(
        &self,
        _: Request<pb::UpdateScriptUserStateRequest>,
    ) -> Answer<pb::ScriptUserState> {
        Err(Status::unimplemented("echo"))
    }

    async fn get_script_user_state(
        &self,
        _: Request<pb::GetScriptUserStateRequest>,
    ) -> Answer<pb::ScriptUserState> {
        Err(Status::unimplemented("echo"))
    }

    async fn create_script_device_state(
        &self,
        _: Request<pb::CreateScriptDeviceStateRequest>,
    ) -> Answer<pb::ScriptDeviceState> {
        Err(Status::unimplemented("echo"))
    }

    async fn update_script_device_state(
        &self,
        _: Request<pb::UpdateScriptDeviceStateRequest>,
    ) -> Answer<pb::ScriptDeviceState> {
        Err(Status::unimplemented("echo"))
    }

    async fn get_script_device_state(
        &self,
        _: Request<pb::GetScriptDeviceStateRequest>,
    ) -> Answer<pb::ScriptDeviceState> {
        Err(Status::unimplemented("echo"))
    }

    async fn create_compliance_script_device_state(
        &self,
        _: Request<pb::CreateComplianceScriptDeviceStateRequest>,
    ) -> Answer<pb::ComplianceScriptDeviceState> {
        Err(Status::unimplemented("echo"))
    }

    async fn update_compliance_script_device_state(
        &self,
        _: Request<pb::UpdateComplianceScriptDeviceStateRequest>,
    ) -> Answer<pb::ComplianceScriptDeviceState> {
        Err(Status::unimplemented("echo"))
    }

    async fn get_compliance_script_device_state(
        &self,
        _: Request<pb::GetComplianceScriptDeviceStateRequest>,
    ) -> Answer<pb::ComplianceScriptDeviceState> {
        Err(Status::unimplemented("echo"))
    }

    async fn list_script_user_states(
        &self,
        _: Request<pb::ListScriptUserStatesRequest>,
    ) -> Answer<pb::ListScriptUserStatesResponse> {
        Err(Status::unimplemented("echo"))
    }

    async fn delete_script_user_state(
        &self,
        _: Request<pb::DeleteScriptUserStateRequest>,
    ) -> Answer<()> {
        Err(Status::unimplemented("echo"))
    }

    async fn list_script_device_states(
        &self,
        _: Request<pb::ListScriptDeviceStatesRequest>,
    ) -> Answer<pb::ListScriptDeviceStatesResponse> {
        Err(Status::unimplemented("echo"))
    }

    async fn delete_script_device_state(
        &self,
        _: Request<pb::DeleteScriptDeviceStateRequest>,
    ) -> Answer<()> {
        Err(Status::unimplemented("echo"))
    }

    async fn batch_create_script_device_states(
        &self,
        _: Request<pb::BatchCreateScriptDeviceStatesRequest>,
    ) -> Answer<pb::BatchCreateScriptDeviceStatesResponse> {
        Err(Status::unimplemented("echo"))
    }

    async fn list_compliance_script_device_states(
        &self,
        _: Request<pb::ListComplianceScriptDeviceStatesRequest>,
    ) -> Answer<pb::ListComplianceScriptDeviceStatesResponse> {
        Err(Status::unimplemented("echo"))
    }

    async fn delete_compliance_script_device_state(
        &self,
        _: Request<pb::DeleteComplianceScriptDeviceStateRequest>,
    ) -> Answer<()> {
        Err(Status::unimplemented("echo"))
    }

    async fn batch_create_compliance_script_device_states(
        &self,
        _: Request<pb::BatchCreateComplianceScriptDeviceStatesRequest>,
    ) -> Answer<pb::BatchCreateComplianceScriptDeviceStatesResponse> {
        Err(Status::unimplemented("echo"))
    }

    type StreamCreateScriptDeviceStatesStream =
        tokio_stream::Empty<Result<pb::StreamCreateScriptDeviceStatesResponse, Status>>;

    async fn stream_create_script_device_states(
        &self,
        _: Request<tonic::Streaming<pb::StreamCreateScriptDeviceStatesRequest>>,
    ) -> Answer<Self::StreamCreateScriptDeviceStatesStream> {
        Err(Status::unimplemented("echo"))
    }

    async fn submit_run_states(
        &self,
        _: Request<pb::SubmitRunStatesRequest>,
    ) -> Answer<pb::longrunning::Operation> {
        Err(Status::unimplemented("echo"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:50099".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    eprintln!("bench_echo listening on {listen}");
    Server::builder()
        .add_service(RunStateServiceServer::new(Echo))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
