//! Timestamps through the whole gateway, both ways.

use runstate_emulator::Fault;
use runstate_gateway::pb::{ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest};
use serde_json::json;

use crate::helpers::{assert_violation, spawn_app, ts};

fn create(state: ComplianceScriptDeviceState) -> CreateComplianceScriptDeviceStateRequest {
    CreateComplianceScriptDeviceStateRequest {
        parent: "deviceComplianceScripts/c".into(),
        compliance_script_device_state: Some(state),
        ..Default::default()
    }
}

#[tokio::test]
async fn writes_utc_with_seven_digits() {
    let table = [
        (ts(0, 0), "1970-01-01T00:00:00.0000000Z"),
        (ts(-1, 999_999_999), "1969-12-31T23:59:59.9999999Z"),
        (ts(-2_208_988_800, 50), "1900-01-01T00:00:00.0000000Z"),
        (ts(-62_135_596_800, 0), "0001-01-01T00:00:00.0000000Z"),
        (
            ts(253_402_300_799, 999_999_999),
            "9999-12-31T23:59:59.9999999Z",
        ),
        (ts(951_782_400, 100), "2000-02-29T00:00:00.0000001Z"),
    ];
    let mut app = spawn_app().await;
    for (value, text) in table {
        let state = ComplianceScriptDeviceState {
            last_sync_date_time: value,
            ..Default::default()
        };
        app.client
            .create_compliance_script_device_state(create(state))
            .await
            .unwrap();
        assert_eq!(
            app.requests().pop().unwrap().json()["lastSyncDateTime"],
            text
        );
    }
}

#[tokio::test]
async fn reads_any_offset_and_precision_exactly() {
    let table = [
        (
            "2017-01-01T00:02:58.4418045-08:00",
            ts(1_483_257_778, 441_804_500),
        ),
        (
            "2017-01-01T11:02:58.4418045+03:00",
            ts(1_483_257_778, 441_804_500),
        ),
        ("2017-01-01T08:02:58Z", ts(1_483_257_778, 0)),
        (
            "2017-01-01T08:02:58.4+00:00",
            ts(1_483_257_778, 400_000_000),
        ),
        (
            "2017-01-01T08:02:58.441804+00:00",
            ts(1_483_257_778, 441_804_000),
        ),
        (
            "2017-01-01T08:02:58.123456789012Z",
            ts(1_483_257_778, 123_456_789),
        ),
        ("1969-07-20T20:17:40Z", ts(-14_182_940, 0)),
        ("0001-01-01T00:00:00Z", ts(-62_135_596_800, 0)),
        (
            "9999-12-31T23:59:59.9999999Z",
            ts(253_402_300_799, 999_999_900),
        ),
    ];
    let mut app = spawn_app().await;
    for (text, want) in table {
        let body =
            json!({"id": "x", "lastSyncDateTime": text, "expectedStateUpdateDateTime": null})
                .to_string();
        app.graph.inject(
            Fault::status(201)
                .raw_body("application/json", &body)
                .times(1),
        );
        let got = app
            .client
            .create_compliance_script_device_state(create(Default::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.last_sync_date_time, want, "{text}");
        assert_eq!(got.expected_state_update_date_time, None, "null is absent");
    }
}

#[tokio::test]
async fn refuses_timestamps_graph_cannot_hold() {
    let mut app = spawn_app().await;
    for value in [
        ts(0, -1),
        ts(0, 1_000_000_000),
        ts(-62_135_596_801, 0),
        ts(253_402_300_800, 0),
    ] {
        let state = ComplianceScriptDeviceState {
            last_state_update_date_time: value,
            ..Default::default()
        };
        let err = app
            .client
            .create_compliance_script_device_state(create(state))
            .await
            .unwrap_err();
        assert_violation(
            &err,
            "compliance_script_device_state.last_state_update_date_time",
        );
    }
    assert_eq!(app.graph.request_count(), 0);
}
