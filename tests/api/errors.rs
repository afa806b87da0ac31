//! Graph errors become meaningful gRPC statuses with rich details.

use std::time::Duration;

use runstate_emulator::Fault;
use runstate_gateway::pb::{
    CreateScriptUserStateRequest, GetScriptUserStateRequest, ScriptUserState,
    UpdateScriptUserStateRequest,
};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::helpers::{spawn_app, spawn_app_with};

fn create() -> CreateScriptUserStateRequest {
    CreateScriptUserStateRequest {
        parent: "deviceShellScripts/s".into(),
        script_user_state: Some(ScriptUserState::default()),
        ..Default::default()
    }
}

fn get() -> GetScriptUserStateRequest {
    GetScriptUserStateRequest {
        name: "deviceShellScripts/s/userRunStates/u".into(),
    }
}

fn update() -> UpdateScriptUserStateRequest {
    UpdateScriptUserStateRequest {
        script_user_state: Some(ScriptUserState {
            name: "deviceShellScripts/s/userRunStates/u".into(),
            error_device_count: 1,
            ..Default::default()
        }),
        update_mask: None,
    }
}

#[tokio::test]
async fn every_graph_status_maps_with_error_info_and_request_info() {
    // POST is not retried on these, so each fault answers exactly once.
    let table = [
        (400, "BadRequest", Code::InvalidArgument),
        (401, "InvalidAuthenticationToken", Code::Unauthenticated),
        (403, "Forbidden", Code::PermissionDenied),
        (404, "ResourceNotFound", Code::NotFound),
        (405, "", Code::Unimplemented),
        (409, "Conflict", Code::AlreadyExists),
        (412, "PreconditionFailed", Code::FailedPrecondition),
        (500, "InternalServerError", Code::Internal),
        (501, "NotImplemented", Code::Unimplemented),
        (502, "", Code::Unavailable),
        // 503 is retried for a create, and a 504 leaves it OUTCOME_UNKNOWN
        // (tests/api/worlds.rs); the mapping itself is unit-tested.
    ];
    let mut app = spawn_app().await;
    for (http, code, want) in table {
        app.graph.inject(
            Fault::status(http)
                .code(code)
                .message(&format!("graph says {http}"))
                .times(1),
        );
        let status = app
            .client
            .create_script_user_state(create())
            .await
            .unwrap_err();
        assert_eq!(status.code(), want, "{http}");
        assert_eq!(status.message(), format!("graph says {http}"));
        let details = status.get_error_details();
        let info = details
            .error_info()
            .unwrap_or_else(|| panic!("no ErrorInfo for {http}"));
        let reason = if code.is_empty() {
            format!("HTTP_{http}")
        } else {
            code.to_string()
        };
        assert_eq!(info.reason, reason);
        assert_eq!(info.domain, "127.0.0.1");
        assert_eq!(info.metadata["http_status"], http.to_string());
        let request_id = status
            .metadata()
            .get("graph-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(info.metadata["request_id"], request_id);
        assert_eq!(details.request_info().unwrap().request_id, request_id);
        let sent = app.requests().pop().unwrap();
        assert_eq!(
            info.metadata["client_request_id"],
            sent.header("client-request-id").unwrap()
        );
    }
    assert_eq!(app.graph.request_count(), table.len() as u64);
}

#[tokio::test]
async fn conflict_on_update_is_aborted() {
    let mut app = spawn_app().await;
    app.graph.inject(Fault::status(409).method("PATCH"));
    let status = app
        .client
        .update_script_user_state(update())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
}

#[tokio::test]
async fn throttling_carries_retry_info() {
    let mut app = spawn_app_with(&["--graph-token", "t", "--graph-max-retries", "0"]).await;
    app.graph.inject(
        Fault::status(429)
            .code("TooManyRequests")
            .retry_after("17")
            .times(1),
    );
    let status = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let details = status.get_error_details();
    assert_eq!(
        details.retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(17))
    );
    assert_eq!(details.error_info().unwrap().reason, "TooManyRequests");
    // Intune often sends 429 without Retry-After: a delay is still suggested.
    app.graph.inject(Fault::status(429).times(1));
    let status = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap_err();
    assert!(
        status
            .get_error_details()
            .retry_info()
            .unwrap()
            .retry_delay
            .is_some()
    );
}

#[tokio::test]
async fn non_json_error_bodies_are_handled() {
    let mut app = spawn_app().await;
    app.graph.inject(Fault::status(502).raw_body(
        "text/html",
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
    ));
    let status = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("502"), "{}", status.message());
    assert!(!status.message().contains("<html>"));
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "HTTP_502"
    );
}

#[tokio::test]
async fn unserved_routes_are_unimplemented() {
    let mut app = spawn_app().await;
    app.graph.inject(Fault::unserved_route("GET"));
    let status = app
        .client
        .get_script_user_state(GetScriptUserStateRequest {
            name: "deviceShellScripts/s/userRunStates/u".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status
            .message()
            .starts_with("Graph does not serve this route"),
        "{}",
        status.message()
    );
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "No method match route template"
    );
}

#[tokio::test]
async fn unreachable_graph_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/beta");
    let mut app = crate::helpers::start(&[
        "--listen",
        "127.0.0.1:0",
        "--graph-url",
        &url,
        "--graph-token",
        "t",
        "--graph-max-retries",
        "1",
    ])
    .await;
    let status = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "GRAPH_UNREACHABLE"
    );
}

#[tokio::test]
async fn a_slow_graph_meets_the_callers_deadline() {
    let mut app = spawn_app().await;
    app.graph.set_latency(Duration::from_secs(3));
    let mut request = Request::new(get());
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = app.client.get_script_user_state(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_side_deadline_applies_without_grpc_timeout() {
    let mut app = spawn_app_with(&["--graph-token", "t", "--request-timeout", "300ms"]).await;
    app.graph.set_latency(Duration::from_secs(3));
    let status = app.client.get_script_user_state(get()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn a_create_cut_off_by_the_deadline_may_have_been_applied() {
    // The gateway's own deadline (no grpc-timeout), so the client's timer
    // cannot race the answer on a loaded machine.
    let mut app = spawn_app_with(&["--graph-token", "t", "--request-timeout", "300ms"]).await;
    app.graph.set_latency(Duration::from_secs(3));
    let status = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap_err();
    // The POST was sent: its outcome is unknown, not a plain deadline.
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "OUTCOME_UNKNOWN");
    assert!(status.message().contains("may have been applied"));
}
