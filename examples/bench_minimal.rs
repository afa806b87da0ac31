//! Contender E of the benchmark (`bench/run.py`): the smallest translating
//! gateway. One RPC, `CreateScriptUserState`, turned into the same Graph JSON
//! the gateway sends and POSTed with a bare hyper-util client; the Graph answer
//! is mapped back to a `ScriptUserState`. No validation, retries, limits,
//! metrics or logging: the floor for a gateway that translates, so B/E shows
//! what the production features cost. Every other RPC is UNIMPLEMENTED.
//!
//! Usage:
//!
//! ```text
//! bench_minimal --listen 127.0.0.1:PORT --upstream URL [--upstream-mode http1|h2c|tls]
//!               [--ca-file PEM] [--token TOKEN]
//! ```
//!
//! `URL` is the Graph base, e.g. `http://127.0.0.1:P/beta` or
//! `https://localhost:P/beta`. `http1`: HTTP/1.1 with a connection pool;
//! `h2c`: HTTP/2 with prior knowledge; `tls`: TLS trusting only `--ca-file`,
//! ALPN `h2`. The runtime is current-thread (the gateway runs with
//! `TOKIO_WORKER_THREADS=1`).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use runstate_gateway::pb::{
    self,
    run_state_service_server::{RunStateService, RunStateServiceServer},
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, transport::Server};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

struct Minimal {
    client: Client<Connector, Full<Bytes>>,
    base: String,
    authorization: http::HeaderValue,
}

/// The body the gateway POSTs for a user state (same property order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserStateOut<'a> {
    #[serde(rename = "@odata.type")]
    odata_type: &'static str,
    success_device_count: i32,
    error_device_count: i32,
    user_principal_name: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserStateIn {
    id: String,
    #[serde(default)]
    success_device_count: i32,
    #[serde(default)]
    error_device_count: i32,
    #[serde(default)]
    user_principal_name: Option<String>,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RunStateService for Minimal {
    async fn create_script_user_state(
        &self,
        request: Request<pb::CreateScriptUserStateRequest>,
    ) -> Answer<pb::ScriptUserState> {
        let req = request.into_inner();
        let state = req.script_user_state.unwrap_or_default();
        let body = serde_json::to_vec(&UserStateOut {
            odata_type: "#microsoft.graph.deviceManagementScriptUserState",
            success_device_count: state.success_device_count,
            error_device_count: state.error_device_count,
            user_principal_name: state.user_principal_name.as_deref(),
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        let uri = format!(
            "{}/deviceManagement/{}/userRunStates",
            self.base, req.parent
        );
        let post = http::Request::post(uri)
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Status::internal(e.to_string()))?;
        let answer = self
            .client
            .request(post)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let status = answer.status();
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(Status::unknown(format!("Graph answered {status}")));
        }
        let got: UserStateIn =
            serde_json::from_slice(&bytes).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ScriptUserState {
            name: format!("{}/userRunStates/{}", req.parent, got.id),
            id: got.id,
            user_principal_name: got.user_principal_name,
            success_device_count: got.success_device_count,
            error_device_count: got.error_device_count,
        }))
    }

    async fn update_script_user_state(
        &self,
        _: Request<pb::UpdateScriptUserStateRequest>,
    ) -> Answer<pb::ScriptUserState> {
        Err(Status::unimplemented("minimal"))
    }

    async fn get_script_user_state(
        &self,
        _: Request<pb::GetScriptUserStateRequest>,
    ) -> Answer<pb::ScriptUserState> {
        Err(Status::unimplemented("minimal"))
    }

    async fn create_script_device_state(
        &self,
        _: Request<pb::CreateScriptDeviceStateRequest>,
    ) -> Answer<pb::ScriptDeviceState> {
        Err(Status::unimplemented("minimal"))
    }

    async fn update_script_device_state(
        &self,
        _: Request<pb::UpdateScriptDeviceStateRequest>,
    ) -> Answer<pb::ScriptDeviceState> {
        Err(Status::unimplemented("minimal"))
    }

    async fn get_script_device_state(
        &self,
        _: Request<pb::GetScriptDeviceStateRequest>,
    ) -> Answer<pb::ScriptDeviceState> {
        Err(Status::unimplemented("minimal"))
    }

    async fn create_compliance_script_device_state(
        &self,
        _: Request<pb::CreateComplianceScriptDeviceStateRequest>,
    ) -> Answer<pb::ComplianceScriptDeviceState> {
        Err(Status::unimplemented("minimal"))
    }

    async fn update_compliance_script_device_state(
        &self,
        _: Request<pb::UpdateComplianceScriptDeviceStateRequest>,
    ) -> Answer<pb::ComplianceScriptDeviceState> {
        Err(Status::unimplemented("minimal"))
    }
    async fn get_compliance_script_device_state(
        &self,
        _: Request<pb::GetComplianceScriptDeviceStateRequest>,
    ) -> Answer<pb::ComplianceScriptDeviceState> {
        Err(Status::unimplemented("minimal"))
    }

    async fn list_script_user_states(
        &self,
        _: Request<pb::ListScriptUserStatesRequest>,
    ) -> Answer<pb::ListScriptUserStatesResponse> {
        Err(Status::unimplemented("minimal"))
    }

    async fn delete_script_user_state(
        &self,
        _: Request<pb::DeleteScriptUserStateRequest>,
    ) -> Answer<()> {
        Err(Status::unimplemented("minimal"))
    }

    async fn list_script_device_states(
        &self,
        _: Request<pb::ListScriptDeviceStatesRequest>,
    ) -> Answer<pb::ListScriptDeviceStatesResponse> {
        Err(Status::unimplemented("minimal"))
    }

    async fn delete_script_device_state(
        &self,
        _: Request<pb::DeleteScriptDeviceStateRequest>,
    ) -> Answer<()> {
        Err(Status::unimplemented("minimal"))
    }

    async fn batch_create_script_device_states(
        &self,
        _: Request<pb::BatchCreateScriptDeviceStatesRequest>,
    ) -> Answer<pb::BatchCreateScriptDeviceStatesResponse> {
        Err(Status::unimplemented("minimal"))
    }

    async fn list_compliance_script_device_states(
        &self,
        _: Request<pb::ListComplianceScriptDeviceStatesRequest>,
    ) -> Answer<pb::ListComplianceScriptDeviceStatesResponse> {
        Err(Status::unimplemented("minimal"))
    }

    async fn delete_compliance_script_device_state(
        &self,
        _: Request<pb::DeleteComplianceScriptDeviceStateRequest>,
    ) -> Answer<()> {
        Err(Status::unimplemented("minimal"))
    }

    async fn batch_create_compliance_script_device_states(
        &self,
        _: Request<pb::BatchCreateComplianceScriptDeviceStatesRequest>,
    ) -> Answer<pb::BatchCreateComplianceScriptDeviceStatesResponse> {
        Err(Status::unimplemented("minimal"))
    }

    type StreamCreateScriptDeviceStatesStream =
        tokio_stream::Empty<Result<pb::StreamCreateScriptDeviceStatesResponse, Status>>;

    async fn stream_create_script_device_states(
        &self,
        _: Request<tonic::Streaming<pb::StreamCreateScriptDeviceStatesRequest>>,
    ) -> Answer<Self::StreamCreateScriptDeviceStatesStream> {
        Err(Status::unimplemented("minimal"))
    }

    async fn submit_run_states(
        &self,
        _: Request<pb::SubmitRunStatesRequest>,
    ) -> Answer<pb::longrunning::Operation> {
        Err(Status::unimplemented("minimal"))
    }
}

fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, Box<dyn std::error::Error>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)? {
            roots.add(cert?)?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:50098".parse()?;
    let mut upstream = "http://127.0.0.1:8080/beta".to_owned();
    let mut mode = "http1".to_owned();
    let mut ca_file = None;
    let mut token = "Bearer bench-token".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?.parse()?,
            "--upstream" => upstream = value()?,
            "--upstream-mode" => mode = value()?,
            "--ca-file" => ca_file = Some(value()?),
            "--token" => token = value()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let builder =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config(ca_file.as_deref())?);
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let (connector, h2) = match mode.as_str() {
        "http1" => (
            builder.https_or_http().enable_http1().wrap_connector(http),
            false,
        ),
        "h2c" => (
            builder.https_or_http().enable_http2().wrap_connector(http),
            true,
        ),
        "tls" => (
            builder.https_only().enable_http2().wrap_connector(http),
            true,
        ),
        other => return Err(format!("--upstream-mode {other:?}: http1, h2c or tls").into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build(connector);
        let service = Minimal {
            client,
            base: upstream.trim_end_matches('/').to_owned(),
            authorization: http::HeaderValue::from_str(&token)?,
        };
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(RunStateServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
