//! The server around the API: health, reflection, the embedded emulator.

use runstate_gateway::pb::{CreateScriptUserStateRequest, ScriptUserState};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{spawn_app, start};

#[tokio::test]
async fn health_reports_serving() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "intune.runstates.v1.RunStateService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn emulator_mode_works_with_no_token_and_no_tenant() {
    let mut app = start(&["--listen", "127.0.0.1:0", "--emulator"]).await;
    let state = app
        .client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: "deviceShellScripts/s".into(),
            script_user_state: Some(ScriptUserState {
                success_device_count: 3,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.success_device_count, 3);
    assert_eq!(
        app.graph.request_count(),
        1,
        "the embedded emulator served it"
    );
}

#[tokio::test]
async fn h2c_upstream_serves_every_call_shape() {
    use runstate_gateway::pb::UpdateScriptUserStateRequest;
    let mut app = crate::helpers::spawn_app_with(&["--graph-token", "t", "--graph-h2c"]).await;
    app.graph.set_patch_no_content(true);
    let state = app
        .client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: "deviceManagementScripts/s".into(),
            script_user_state: Some(ScriptUserState::default()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let updated = app
        .client
        .update_script_user_state(UpdateScriptUserStateRequest {
            script_user_state: Some(ScriptUserState {
                name: state.name,
                success_device_count: 4,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.success_device_count, 4);
    let versions: Vec<_> = app.requests().iter().map(|r| r.version.clone()).collect();
    assert_eq!(versions, ["HTTP/2.0"; 3], "POST, PATCH, GET over h2c");
}

#[tokio::test]
async fn excess_concurrent_calls_are_shed_not_queued() {
    let app =
        crate::helpers::spawn_app_with(&["--graph-token", "t", "--max-concurrent-requests", "2"])
            .await;
    app.graph.set_latency(std::time::Duration::from_millis(400));
    let calls = (0..4).map(|_| {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            client
                .create_script_user_state(CreateScriptUserStateRequest {
                    parent: "deviceShellScripts/s".into(),
                    script_user_state: Some(ScriptUserState::default()),
                    ..Default::default()
                })
                .await
        })
    });
    let mut codes = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        codes.push(
            call.await
                .unwrap()
                .map(|_| tonic::Code::Ok)
                .unwrap_or_else(|s| s.code()),
        );
    }
    let ok = codes.iter().filter(|c| **c == tonic::Code::Ok).count();
    let shed = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert_eq!((ok, shed), (2, 2), "{codes:?}");
}
