//! Malformed requests: INVALID_ARGUMENT with a field violation, and Graph sees nothing.

use runstate_gateway::pb::{
    ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest,
    CreateScriptDeviceStateRequest, CreateScriptUserStateRequest,
    GetComplianceScriptDeviceStateRequest, GetScriptDeviceStateRequest, GetScriptUserStateRequest,
    ScriptDeviceState, ScriptUserState, UpdateComplianceScriptDeviceStateRequest,
    UpdateScriptDeviceStateRequest, UpdateScriptUserStateRequest,
};
use tonic::Code;

use crate::helpers::{assert_violation, spawn_app};

/// Names that must never become a Graph URL, whatever the RPC.
const HOSTILE: [&str; 22] = [
    "",
    "/",
    "..",
    "deviceShellScripts",
    "deviceShellScripts/",
    "deviceShellScripts/../../users",
    "deviceShellScripts/s/../x",
    "deviceShellScripts/./userRunStates/u",
    "deviceShellScripts/s/userRunStates/..",
    "deviceShellScripts/s/userRunStates/u/..",
    "deviceShellScripts/s%2F..%2Fx",
    "deviceShellScripts/s?$select=id",
    "deviceShellScripts/s#frag",
    "deviceShellScripts/s/userRunStates/u?x=1",
    "https://evil.example/deviceShellScripts/s",
    "//evil.example/x",
    "deviceShellScripts/s\\..\\x",
    "deviceShellScripts/s\r\nHost: evil",
    "deviceShellScripts/ s",
    "deviceHealthScripts/s/deviceRunStates/d",
    "deviceManagement/deviceShellScripts/s",
    "deviceShellScripts/s/userRunStates/u/deviceRunStates/d/extra",
];

#[tokio::test]
async fn hostile_parents_and_names_are_refused_for_every_rpc() {
    let mut app = spawn_app().await;
    let long = format!("deviceShellScripts/{}", "a".repeat(257));
    let non_ascii = "deviceShellScripts/sé".to_string();
    for bad in HOSTILE
        .iter()
        .map(|s| s.to_string())
        .chain([long, non_ascii])
    {
        let c = &mut app.client;
        let err = c
            .create_script_user_state(CreateScriptUserStateRequest {
                parent: bad.clone(),
                script_user_state: Some(ScriptUserState::default()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_violation(&err, "parent");
        let err = c
            .create_script_device_state(CreateScriptDeviceStateRequest {
                parent: bad.clone(),
                script_device_state: Some(ScriptDeviceState::default()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_violation(&err, "parent");
        let err = c
            .create_compliance_script_device_state(CreateComplianceScriptDeviceStateRequest {
                parent: bad.replace("deviceShellScripts", "deviceComplianceScripts"),
                compliance_script_device_state: Some(ComplianceScriptDeviceState::default()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_violation(&err, "parent");
        let err = c
            .update_script_user_state(UpdateScriptUserStateRequest {
                script_user_state: Some(ScriptUserState {
                    name: bad.clone(),
                    error_device_count: 1,
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_violation(&err, "script_user_state.name");
        let err = c
            .update_script_device_state(UpdateScriptDeviceStateRequest {
                script_device_state: Some(ScriptDeviceState {
                    name: bad.clone(),
                    error_code: 1,
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_violation(&err, "script_device_state.name");
        let err = c
            .update_compliance_script_device_state(UpdateComplianceScriptDeviceStateRequest {
                compliance_script_device_state: Some(ComplianceScriptDeviceState {
                    name: bad.replace("deviceShellScripts", "deviceComplianceScripts"),
                    script_output: Some("x".into()),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_violation(&err, "compliance_script_device_state.name");
        for err in [
            c.get_script_user_state(GetScriptUserStateRequest { name: bad.clone() })
                .await
                .unwrap_err(),
            c.get_script_device_state(GetScriptDeviceStateRequest { name: bad.clone() })
                .await
                .unwrap_err(),
            c.get_compliance_script_device_state(GetComplianceScriptDeviceStateRequest {
                name: bad.clone(),
            })
            .await
            .unwrap_err(),
        ] {
            assert_violation(&err, "name");
        }
    }
    assert_eq!(app.graph.request_count(), 0, "Graph saw a request");
}

#[tokio::test]
async fn wrong_parent_kinds_are_refused() {
    let mut app = spawn_app().await;
    let err = app
        .client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: "deviceComplianceScripts/c".into(),
            script_user_state: Some(ScriptUserState::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violation(&err, "parent");
    let err = app
        .client
        .create_compliance_script_device_state(CreateComplianceScriptDeviceStateRequest {
            parent: "deviceShellScripts/c".into(),
            compliance_script_device_state: Some(ComplianceScriptDeviceState::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violation(&err, "parent");
    assert_eq!(app.graph.request_count(), 0);
}

#[tokio::test]
async fn bad_fields_are_each_reported() {
    let mut app = spawn_app().await;
    let err = app
        .client
        .create_script_device_state(CreateScriptDeviceStateRequest {
            parent: "deviceShellScripts/s".into(),
            script_device_state: Some(ScriptDeviceState {
                run_state: 99,
                last_state_update_date_time: crate::helpers::ts(0, -5),
                ..Default::default()
            }),
            script_device_state_id: "../x".into(),
            request_id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    for field in [
        "script_device_state.run_state",
        "script_device_state.last_state_update_date_time",
        "script_device_state_id",
        "request_id",
    ] {
        assert_violation(&err, field);
    }
    let err = app
        .client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: "deviceShellScripts/s".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violation(&err, "script_user_state");
    let err = app
        .client
        .update_script_user_state(UpdateScriptUserStateRequest::default())
        .await
        .unwrap_err();
    assert_violation(&err, "script_user_state");
    let err = app
        .client
        .update_script_user_state(UpdateScriptUserStateRequest {
            script_user_state: Some(ScriptUserState {
                name: "deviceShellScripts/s/userRunStates/u".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_violation(&err, "update_mask");
    assert_eq!(app.graph.request_count(), 0);
}

#[tokio::test]
async fn oversized_requests_are_refused() {
    let mut app = spawn_app_small().await;
    let err = app
        .client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: "deviceShellScripts/s".into(),
            script_user_state: Some(ScriptUserState {
                user_principal_name: Some("x".repeat(5000)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // gRPC's code for a message over the size limit.
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(app.graph.request_count(), 0);
}

async fn spawn_app_small() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(&["--graph-token", "t", "--max-request-bytes", "4096"]).await
}
