//! Which token reaches Graph.

use runstate_gateway::pb::{
    CreateScriptDeviceStateRequest, CreateScriptUserStateRequest, ScriptDeviceState,
    ScriptUserState,
};
use tonic::Code;

use crate::helpers::{TOKEN, spawn_app, spawn_app_with, with_token};

fn create_device_state() -> CreateScriptDeviceStateRequest {
    CreateScriptDeviceStateRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_callers_token_is_forwarded_for_delegated_only_calls() {
    let mut app = spawn_app().await;
    app.client
        .create_script_device_state(with_token(create_device_state(), "user-delegated-token"))
        .await
        .unwrap();
    assert_eq!(
        app.requests()[0].header("authorization"),
        Some("Bearer user-delegated-token")
    );
}

#[tokio::test]
async fn the_static_token_is_used_otherwise() {
    let mut app = spawn_app().await;
    app.client
        .create_script_device_state(create_device_state())
        .await
        .unwrap();
    assert_eq!(
        app.requests()[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn no_token_is_unauthenticated_without_calling_graph() {
    let mut app = spawn_app_with(&[]).await;
    let status = app
        .client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: "deviceShellScripts/s".into(),
            script_user_state: Some(ScriptUserState::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(app.graph.request_count(), 0);
}

#[tokio::test]
async fn tokens_are_not_echoed_in_errors() {
    let mut app = spawn_app_with(&[]).await;
    app.graph
        .inject(runstate_gateway::emulator::Fault::status(401).code("InvalidAuthenticationToken"));
    let status = app
        .client
        .create_script_device_state(with_token(create_device_state(), "very-secret-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!format!("{status:?}").contains("very-secret-token"));
}
