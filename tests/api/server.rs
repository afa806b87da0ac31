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
