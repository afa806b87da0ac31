//! request_id: a retried create returns the first result instead of a duplicate.

use runstate_gateway::pb::{
    ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest, RunState,
};

use crate::helpers::{assert_violation, spawn_app};

fn create(request_id: &str, output: &str) -> CreateComplianceScriptDeviceStateRequest {
    CreateComplianceScriptDeviceStateRequest {
        parent: "deviceComplianceScripts/c".into(),
        compliance_script_device_state: Some(ComplianceScriptDeviceState {
            detection_state: RunState::Pending as i32,
            script_output: Some(output.into()),
            ..Default::default()
        }),
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_same_request_id_creates_once() {
    let mut app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let first = app
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap();
    let first_graph_id = first.metadata().get("graph-request-id").cloned();
    let again = app
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap();
    assert_eq!(
        again.metadata().get("graph-request-id").cloned(),
        first_graph_id
    );
    assert_eq!(again.into_inner(), first.into_inner());
    assert_eq!(app.graph.request_count(), 1);

    // Concurrent duplicates also create once.
    let id = uuid::Uuid::new_v4().to_string();
    let (mut c1, mut c2) = (app.client.clone(), app.client.clone());
    let (a, b) = tokio::join!(
        c1.create_compliance_script_device_state(create(&id, "b")),
        c2.create_compliance_script_device_state(create(&id, "b"))
    );
    assert_eq!(a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(app.graph.request_count(), 2);
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_refused() {
    let mut app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    app.client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap();
    let err = app
        .client
        .create_compliance_script_device_state(create(&id, "different"))
        .await
        .unwrap_err();
    assert_violation(&err, "request_id");
    assert_eq!(app.graph.request_count(), 1);
}

#[tokio::test]
async fn a_failed_create_can_be_retried_with_the_same_id() {
    let mut app = spawn_app().await;
    app.graph
        .inject(runstate_gateway::emulator::Fault::status(400).times(1));
    let id = uuid::Uuid::new_v4().to_string();
    assert!(
        app.client
            .create_compliance_script_device_state(create(&id, "a"))
            .await
            .is_err()
    );
    assert!(
        app.client
            .create_compliance_script_device_state(create(&id, "a"))
            .await
            .is_ok()
    );
    assert_eq!(app.graph.request_count(), 2);
}
