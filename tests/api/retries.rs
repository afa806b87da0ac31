//! Throttling is retried within the deadline; nothing is written twice.

use std::time::{Duration, Instant};

use runstate_emulator::Fault;
use runstate_gateway::pb::{
    CreateScriptUserStateRequest, ScriptUserState, UpdateScriptUserStateRequest,
};
use tonic::{Code, Request};

use crate::helpers::{TOKEN, spawn_app, spawn_app_with};
use tonic_types::StatusExt;

fn create() -> CreateScriptUserStateRequest {
    CreateScriptUserStateRequest {
        parent: "deviceShellScripts/s".into(),
        script_user_state: Some(ScriptUserState {
            success_device_count: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn throttled_calls_are_retried_until_they_succeed() {
    let mut app = spawn_app().await;
    app.graph
        .inject(Fault::status(429).retry_after("0").times(2));
    let state = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap()
        .into_inner();
    assert!(!state.id.is_empty());
    let requests = app.requests();
    assert_eq!(requests.len(), 3);
    // Every attempt of one RPC carries the same client-request-id, and
    // retries say which attempt they are (as Microsoft's SDKs do).
    let ids: std::collections::HashSet<_> = requests
        .iter()
        .map(|r| r.header("client-request-id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1);
    let attempts: Vec<_> = requests
        .iter()
        .map(|r| r.header("retry-attempt").map(str::to_owned))
        .collect();
    assert_eq!(attempts, [None, Some("1".into()), Some("2".into())]);
}

#[tokio::test]
async fn retry_after_past_the_deadline_fails_fast() {
    let mut app = spawn_app().await;
    app.graph.inject(Fault::status(429).retry_after("30"));
    let mut request = Request::new(create());
    request.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let status = app
        .client
        .create_script_user_state(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "slept toward Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(app.graph.request_count(), 1);
}

#[tokio::test]
async fn a_post_that_may_have_been_applied_is_not_blindly_retried() {
    let mut app = spawn_app().await;
    app.lose_the_next_answer();
    let status = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "OUTCOME_UNKNOWN");
    assert!(
        status.message().contains("may have been applied"),
        "{}",
        status.message()
    );
    assert_eq!(app.graph.request_count(), 1, "no second POST");
}

#[tokio::test]
async fn a_post_with_a_request_id_is_resolved_by_reading_back_where_ids_are_honoured() {
    let mut app = spawn_app_with(&["--graph-token", TOKEN, "--graph-client-ids", "honour"]).await;
    // The first POST is stored but its answer is lost behind a 504.
    app.lose_the_next_answer();
    let mut req = create();
    req.script_user_state_id = "u-1".into();
    req.request_id = uuid::Uuid::new_v4().to_string();
    let state = app
        .client
        .create_script_user_state(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.name, "deviceShellScripts/s/userRunStates/u-1");
    assert_eq!(state.success_device_count, 1);
    let methods = app.methods();
    assert_eq!(methods, ["POST", "GET"], "read back, not sent again");
    let list = reqwest_list(&app).await;
    assert_eq!(list, 1, "exactly one state stored");
}

#[tokio::test]
async fn server_errors_other_than_503_are_not_retried_for_a_post_but_503_is() {
    let mut app = spawn_app().await;
    app.graph
        .inject(Fault::status(503).method("POST").retry_after("0").times(2));
    app.client
        .create_script_user_state(create())
        .await
        .expect("503 applied nothing: retried");
    assert_eq!(app.graph.request_count(), 3);
}

#[tokio::test]
async fn patch_is_retried_on_unavailable() {
    let mut app = spawn_app().await;
    let state = app
        .client
        .create_script_user_state(create())
        .await
        .unwrap()
        .into_inner();
    app.graph
        .inject(Fault::status(503).method("PATCH").retry_after("0").times(1));
    let req = UpdateScriptUserStateRequest {
        script_user_state: Some(ScriptUserState {
            name: state.name,
            error_device_count: 4,
            ..Default::default()
        }),
        update_mask: None,
    };
    let updated = app
        .client
        .update_script_user_state(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.error_device_count, 4);
}

/// Counts the stored user states by listing the collection on the emulator.
async fn reqwest_list(app: &crate::helpers::TestApp) -> usize {
    let recorded = app.requests();
    let base = recorded[0].header("host").unwrap().to_string();
    let text = reqwest::Client::new()
        .get(format!(
            "http://{base}/beta/deviceManagement/deviceShellScripts/s/userRunStates"
        ))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    body["value"].as_array().unwrap().len()
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let mut app = spawn_app().await;
    app.graph
        .inject(Fault::status(429).retry_after("1").times(1));
    let started = Instant::now();
    app.client.create_script_user_state(create()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried after {:?}",
        started.elapsed()
    );
    assert_eq!(app.graph.request_count(), 2);
}

#[tokio::test]
async fn throttling_without_retry_after_backs_off_and_succeeds() {
    let mut app = spawn_app().await;
    app.graph.inject(Fault::status(429).times(2));
    let started = Instant::now();
    app.client.create_script_user_state(create()).await.unwrap();
    // Backoff: at least half of 200 ms, then half of 400 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.graph.request_count(), 3);
}
