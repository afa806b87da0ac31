use runstate_gateway::pb::{
    ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest,
    GetComplianceScriptDeviceStateRequest, RunState, UpdateComplianceScriptDeviceStateRequest,
};
use serde_json::json;

use crate::helpers::{mask, spawn_app, ts};

fn seed() -> ComplianceScriptDeviceState {
    ComplianceScriptDeviceState {
        detection_state: RunState::Success as i32,
        last_state_update_date_time: ts(1_483_257_778, 441_804_500),
        expected_state_update_date_time: ts(1_483_257_506, 929_464_100),
        last_sync_date_time: ts(1_483_257_769, 320_597_600),
        script_output: Some("Script Output value".into()),
        script_error: Some("Script Error value".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn creates_with_graphs_body_and_reads_it_back() {
    let mut app = spawn_app().await;
    let req = CreateComplianceScriptDeviceStateRequest {
        parent: "deviceComplianceScripts/c1".into(),
        compliance_script_device_state: Some(seed()),
        ..Default::default()
    };
    let state = app
        .client
        .create_compliance_script_device_state(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state.name,
        format!("deviceComplianceScripts/c1/deviceRunStates/{}", state.id)
    );
    assert_eq!(
        ComplianceScriptDeviceState {
            name: String::new(),
            id: String::new(),
            ..state.clone()
        },
        seed()
    );
    let sent = app.requests().pop().unwrap();
    assert_eq!(
        sent.path,
        "/beta/deviceManagement/deviceComplianceScripts/c1/deviceRunStates"
    );
    assert_eq!(
        sent.json(),
        json!({"@odata.type": "#microsoft.graph.deviceComplianceScriptDeviceState",
               "detectionState": "success",
               "lastStateUpdateDateTime": "2017-01-01T08:02:58.4418045Z",
               "expectedStateUpdateDateTime": "2017-01-01T07:58:26.9294641Z",
               "lastSyncDateTime": "2017-01-01T08:02:49.3205976Z",
               "scriptOutput": "Script Output value", "scriptError": "Script Error value"})
    );
    let got = app
        .client
        .get_compliance_script_device_state(GetComplianceScriptDeviceStateRequest {
            name: state.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, state);
}

#[tokio::test]
async fn absent_expected_time_is_null_and_can_be_cleared() {
    let mut app = spawn_app().await;
    let req = CreateComplianceScriptDeviceStateRequest {
        parent: "deviceComplianceScripts/c1".into(),
        compliance_script_device_state: Some(ComplianceScriptDeviceState {
            expected_state_update_date_time: None,
            last_sync_date_time: ts(-62_135_596_800, 0),
            last_state_update_date_time: ts(253_402_300_799, 999_999_999),
            ..Default::default()
        }),
        compliance_script_device_state_id: "dev-1".into(),
        ..Default::default()
    };
    let state = app
        .client
        .create_compliance_script_device_state(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.expected_state_update_date_time, None);
    assert_eq!(state.last_sync_date_time, ts(-62_135_596_800, 0));
    assert_eq!(
        state.last_state_update_date_time,
        ts(253_402_300_799, 999_999_900)
    );
    assert_eq!(
        app.requests()[0].json(),
        json!({"@odata.type": "#microsoft.graph.deviceComplianceScriptDeviceState", "id": "dev-1",
               "lastStateUpdateDateTime": "9999-12-31T23:59:59.9999999Z",
               "lastSyncDateTime": "0001-01-01T00:00:00.0000000Z"})
    );

    let set = UpdateComplianceScriptDeviceStateRequest {
        compliance_script_device_state: Some(ComplianceScriptDeviceState {
            name: state.name.clone(),
            expected_state_update_date_time: ts(0, 0),
            ..Default::default()
        }),
        update_mask: None,
    };
    let updated = app
        .client
        .update_compliance_script_device_state(set)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.expected_state_update_date_time, ts(0, 0));
    let clear = UpdateComplianceScriptDeviceStateRequest {
        compliance_script_device_state: Some(ComplianceScriptDeviceState {
            name: state.name.clone(),
            ..Default::default()
        }),
        update_mask: mask(&["expected_state_update_date_time", "script_output"]),
    };
    let cleared = app
        .client
        .update_compliance_script_device_state(clear)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        app.requests().pop().unwrap().json(),
        json!({"expectedStateUpdateDateTime": null, "scriptOutput": null})
    );
    assert_eq!(cleared.expected_state_update_date_time, None);
    assert_eq!(cleared.last_sync_date_time, ts(-62_135_596_800, 0));
}
