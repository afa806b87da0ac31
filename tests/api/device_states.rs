use runstate_emulator::Fault;
use runstate_gateway::pb::{
    CreateScriptDeviceStateRequest, CreateScriptUserStateRequest, GetScriptDeviceStateRequest,
    RunState, ScriptDeviceState, ScriptUserState, UpdateScriptDeviceStateRequest,
};
use serde_json::json;
use tonic::Code;

use crate::helpers::{TestApp, assert_violation, mask, spawn_app, ts};

const KINDS: [&str; 3] = [
    "deviceManagementScripts",
    "deviceShellScripts",
    "deviceCustomAttributeShellScripts",
];

fn seed_state() -> ScriptDeviceState {
    ScriptDeviceState {
        run_state: RunState::Success as i32,
        result_message: Some("Result Message value".into()),
        // 2017-01-01T00:02:58.4418045-08:00, as in Graph's page.
        last_state_update_date_time: ts(1_483_257_778, 441_804_500),
        error_code: 9,
        error_description: Some("Error Description value".into()),
        ..Default::default()
    }
}

fn create(parent: &str, state: ScriptDeviceState) -> CreateScriptDeviceStateRequest {
    CreateScriptDeviceStateRequest {
        parent: parent.into(),
        script_device_state: Some(state),
        ..Default::default()
    }
}

async fn user_state(app: &mut TestApp, script: &str) -> String {
    let req = CreateScriptUserStateRequest {
        parent: script.into(),
        script_user_state: Some(ScriptUserState::default()),
        ..Default::default()
    };
    app.client
        .create_script_user_state(req)
        .await
        .unwrap()
        .into_inner()
        .name
}

#[tokio::test]
async fn creates_under_every_script_and_user_state_kind() {
    let mut app = spawn_app().await;
    for kind in KINDS {
        let script = format!("{kind}/s1");
        let user = user_state(&mut app, &script).await;
        for parent in [script.clone(), user.clone()] {
            let state = app
                .client
                .create_script_device_state(create(&parent, seed_state()))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(state.name, format!("{parent}/deviceRunStates/{}", state.id));
            assert_eq!(state.run_state, RunState::Success as i32);
            assert_eq!(
                state.last_state_update_date_time,
                ts(1_483_257_778, 441_804_500)
            );
            assert_eq!(state.error_code, 9);

            let sent = app.requests().pop().unwrap();
            assert_eq!(
                sent.path,
                format!("/beta/deviceManagement/{parent}/deviceRunStates")
            );
            assert_eq!(
                sent.json(),
                json!({"@odata.type": "#microsoft.graph.deviceManagementScriptDeviceState",
                       "runState": "success", "resultMessage": "Result Message value",
                       "lastStateUpdateDateTime": "2017-01-01T08:02:58.4418045Z",
                       "errorCode": 9, "errorDescription": "Error Description value"})
            );
            let got = app
                .client
                .get_script_device_state(GetScriptDeviceStateRequest {
                    name: state.name.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got, state);
        }
    }
}

#[tokio::test]
async fn a_user_state_must_exist_before_its_device_states() {
    let mut app = spawn_app().await;
    let err = app
        .client
        .create_script_device_state(create(
            "deviceShellScripts/s/userRunStates/nobody",
            seed_state(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn every_run_state_maps_to_graphs_name_and_back() {
    let table = [
        (RunState::Unknown, "unknown"),
        (RunState::Success, "success"),
        (RunState::Fail, "fail"),
        (RunState::ScriptError, "scriptError"),
        (RunState::Pending, "pending"),
        (RunState::NotApplicable, "notApplicable"),
    ];
    let mut app = spawn_app().await;
    for (state, name) in table {
        let req = create(
            "deviceManagementScripts/s",
            ScriptDeviceState {
                run_state: state as i32,
                ..Default::default()
            },
        );
        let created = app
            .client
            .create_script_device_state(req)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.run_state, state as i32);
        assert_eq!(app.requests().pop().unwrap().json()["runState"], name);
    }
    // UNSPECIFIED is "not set": the property is left out, Graph's default applies.
    let req = create("deviceManagementScripts/s", ScriptDeviceState::default());
    let created = app
        .client
        .create_script_device_state(req)
        .await
        .unwrap()
        .into_inner();
    let body = app.requests().pop().unwrap().json();
    assert!(
        body.get("runState").is_none() && body.get("lastStateUpdateDateTime").is_none(),
        "{body}"
    );
    assert_eq!(created.run_state, RunState::Unknown as i32);
    assert_eq!(
        created.last_state_update_date_time,
        ts(-62_135_596_800, 0),
        "Graph's 'never'"
    );
}

#[tokio::test]
async fn an_unknown_run_state_from_graph_does_not_fail_the_call() {
    let mut app = spawn_app().await;
    app.graph.inject(
        Fault::status(201)
            .raw_body(
                "application/json",
                r#"{"id":"d1","runState":"someFutureValue","errorCode":1}"#,
            )
            .times(1),
    );
    let state = app
        .client
        .create_script_device_state(create("deviceShellScripts/s", seed_state()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.run_state, RunState::Unspecified as i32);
    assert_eq!(state.name, "deviceShellScripts/s/deviceRunStates/d1");
}

#[tokio::test]
async fn update_masks_and_nulls() {
    let mut app = spawn_app().await;
    let user = user_state(&mut app, "deviceManagementScripts/s").await;
    let state = app
        .client
        .create_script_device_state(create(&user, seed_state()))
        .await
        .unwrap()
        .into_inner();
    let req = UpdateScriptDeviceStateRequest {
        script_device_state: Some(ScriptDeviceState {
            name: state.name.clone(),
            run_state: RunState::ScriptError as i32,
            result_message: None,
            last_state_update_date_time: ts(1_700_000_000, 123_456_789),
            ..Default::default()
        }),
        update_mask: mask(&["run_state", "result_message", "last_state_update_date_time"]),
    };
    let updated = app
        .client
        .update_script_device_state(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        app.requests().pop().unwrap().json(),
        json!({"runState": "scriptError", "resultMessage": null, "lastStateUpdateDateTime": "2023-11-14T22:13:20.1234567Z"})
    );
    assert_eq!(updated.run_state, RunState::ScriptError as i32);
    assert_eq!(updated.result_message, None);
    assert_eq!(
        updated.last_state_update_date_time,
        ts(1_700_000_000, 123_456_700),
        "sub-100 ns truncated"
    );
    assert_eq!(
        updated.error_description.as_deref(),
        Some("Error Description value")
    );

    // Clearing a non-nullable property is refused before Graph sees it.
    let before = app.graph.request_count();
    let req = UpdateScriptDeviceStateRequest {
        script_device_state: Some(ScriptDeviceState {
            name: state.name.clone(),
            ..Default::default()
        }),
        update_mask: mask(&["last_state_update_date_time"]),
    };
    let err = app
        .client
        .update_script_device_state(req)
        .await
        .unwrap_err();
    assert_violation(&err, "script_device_state.last_state_update_date_time");
    assert_eq!(app.graph.request_count(), before);
}
