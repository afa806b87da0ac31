//! request_id: a retried create returns the first result instead of a duplicate.

use runstate_gateway::pb::{
    ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest, RunState,
};

use crate::helpers::{TOKEN, assert_violation, spawn_app, spawn_app_with};

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

    // Concurrent duplicates also create once (the latency makes them overlap).
    app.graph.set_latency(std::time::Duration::from_millis(200));
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
        .inject(runstate_emulator::Fault::status(400).times(1));
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

#[tokio::test]
async fn a_request_id_survives_a_lost_answer_without_a_duplicate() {
    let mut app = spawn_app_with(&["--graph-token", TOKEN, "--graph-client-ids", "honour"]).await;
    // Graph stores the first POST, but its answer is lost behind a 504.
    app.lose_the_next_answer();
    let id = uuid::Uuid::new_v4().to_string();
    let state = app
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.id, id, "the request_id is the new state's id");
    let methods = app.methods();
    assert_eq!(methods, ["POST", "GET"], "read back, never sent twice");
    assert_eq!(app.requests()[0].json()["id"], id);
}

#[tokio::test]
async fn auto_learns_that_ids_are_kept_then_resolves_a_lost_answer() {
    let mut app = spawn_app().await;
    // Before anything is known, a lost answer stays unknown...
    app.lose_the_next_answer();
    let first = uuid::Uuid::new_v4().to_string();
    let err = app
        .client
        .create_compliance_script_device_state(create(&first, "a"))
        .await
        .unwrap_err();
    assert_outcome_unknown(&err);
    // ...and a create that comes back with the id sent teaches the gateway.
    app.client
        .create_compliance_script_device_state(create(&uuid::Uuid::new_v4().to_string(), "b"))
        .await
        .unwrap();
    app.graph.clear_requests();
    app.lose_the_next_answer();
    let id = uuid::Uuid::new_v4().to_string();
    let state = app
        .client
        .create_compliance_script_device_state(create(&id, "c"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.id, id);
    let methods = app.methods();
    assert_eq!(methods, ["POST", "GET"]);
}

#[tokio::test]
async fn an_unknown_outcome_is_answered_again_without_a_second_post() {
    // The gateway is told Graph ignores ids: nothing can resolve a lost answer.
    let mut app = spawn_app_with(&["--graph-token", TOKEN, "--graph-client-ids", "ignore"]).await;
    app.lose_the_next_answer();
    let id = uuid::Uuid::new_v4().to_string();
    let first = app
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap_err();
    assert_outcome_unknown(&first);
    assert!(app.requests()[0].json().get("id").is_none(), "no id sent");
    for _ in 0..3 {
        let again = app
            .client
            .create_compliance_script_device_state(create(&id, "a"))
            .await
            .unwrap_err();
        assert_outcome_unknown(&again);
        assert_eq!(again.message(), first.message());
    }
    assert_eq!(app.graph.request_count(), 1, "never a second POST");
}

pub fn assert_outcome_unknown(status: &tonic::Status) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "OUTCOME_UNKNOWN");
    assert!(
        status.message().contains("may have been applied"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_request_id_is_honoured_by_another_gateway_instance() {
    let mut first = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let created = first
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap()
        .into_inner();
    // A restarted (or second) gateway has no memory of the id, but Graph has the state.
    let mut second = crate::helpers::start(&[
        "--listen",
        "127.0.0.1:0",
        "--graph-url",
        &first.graph_url,
        "--graph-token",
        crate::helpers::TOKEN,
    ])
    .await;
    let again = second
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, created);
    let methods = first.methods();
    assert_eq!(
        methods,
        ["POST", "POST", "GET"],
        "the replay met a 409 and read the state back"
    );
}

#[tokio::test]
async fn a_large_answer_is_not_kept_but_read_back_on_replay() {
    // Records are bounded in bytes: a 200 KB answer keeps only its name.
    let mut app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let big = "x".repeat(200 * 1024);
    let first = app
        .client
        .create_compliance_script_device_state(create(&id, &big))
        .await
        .unwrap()
        .into_inner();
    let again = app
        .client
        .create_compliance_script_device_state(create(&id, &big))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    let methods = app.methods();
    assert_eq!(
        methods,
        ["POST", "GET"],
        "replayed by reading the state back"
    );
}
