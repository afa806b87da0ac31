//! The write engine: a single create, a `$batch` item and a stream item are
//! budgeted and paused alike, and an item that never left the gateway says so.

use std::time::Duration;

use runstate_emulator::{ClientIds, Fault};
use runstate_gateway::pb::{
    BatchCreateComplianceScriptDeviceStatesRequest, ComplianceScriptDeviceState,
    CreateComplianceScriptDeviceStateRequest, RunState,
    compliance_script_device_state_result::Result as Item,
};
use tonic::{Code, Request};

use crate::helpers::{TOKEN, TestApp, assert_budget_refusal, spawn_app_with};

fn state(output: &str) -> Option<ComplianceScriptDeviceState> {
    Some(ComplianceScriptDeviceState {
        detection_state: RunState::Success as i32,
        script_output: Some(output.into()),
        ..Default::default()
    })
}

fn single(parent: &str, timeout: Duration) -> Request<CreateComplianceScriptDeviceStateRequest> {
    let mut r = Request::new(CreateComplianceScriptDeviceStateRequest {
        parent: parent.into(),
        compliance_script_device_state: state("single"),
        ..Default::default()
    });
    r.set_timeout(timeout);
    r
}

fn batch(
    parent: &str,
    items: usize,
    timeout: Duration,
) -> Request<BatchCreateComplianceScriptDeviceStatesRequest> {
    let mut r = Request::new(BatchCreateComplianceScriptDeviceStatesRequest {
        parent: parent.into(),
        requests: (0..items)
            .map(|n| CreateComplianceScriptDeviceStateRequest {
                compliance_script_device_state: state(&format!("item {n}")),
                ..Default::default()
            })
            .collect(),
    });
    r.set_timeout(timeout);
    r
}

/// POSTs the emulator received under `parent` (alone or inside a `$batch`).
fn posts_under(app: &TestApp, parent: &str) -> usize {
    app.graph
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            if r.path.contains(parent) {
                1
            } else if r.path.contains("batch") {
                r.body.matches(parent).count()
            } else {
                0
            }
        })
        .sum()
}

#[tokio::test]
async fn a_429_on_a_batch_item_pauses_single_writes_of_the_tenant() {
    let app = spawn_app_with(&["--graph-token", TOKEN]).await;
    // Every item of the batch is throttled inside a 200 `$batch` answer.
    app.graph.inject(
        Fault::status(429)
            .method("POST")
            .path_contains("compliance-throttled")
            .retry_after("30")
            .times(100),
    );
    let mut client = app.client.clone();
    let batch = tokio::spawn(async move {
        client
            .batch_create_compliance_script_device_states(batch(
                "deviceComplianceScripts/compliance-throttled",
                3,
                Duration::from_secs(3),
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = app.client.clone();
    let err = client
        .create_compliance_script_device_state(single(
            "deviceComplianceScripts/compliance-other",
            Duration::from_secs(5),
        ))
        .await
        .expect_err("the tenant's writes are paused");
    assert_budget_refusal(&err, "WRITE_BUDGET_EXHAUSTED", Duration::from_secs(20));
    assert_eq!(
        posts_under(&app, "compliance-other"),
        0,
        "the single write never reached Graph"
    );
    let results = batch.await.unwrap().unwrap().into_inner().results;
    assert_eq!(results.len(), 3);
    for r in results {
        match r.result {
            Some(Item::Status(s)) => assert_eq!(s.code, Code::ResourceExhausted as i32, "{s:?}"),
            other => panic!("a throttled item succeeded: {other:?}"),
        }
    }
}

#[tokio::test]
async fn batch_permits_are_held_until_the_batch_is_answered() {
    // 20 writes per 2 s. The batch's 20 writes are answered after 1.5 s, and
    // count in the window from then on: the next write's slot comes 2 s
    // after the answer, past the single's 3 s deadline. Had the batch let
    // its permits go at once, the single would be sent ~2 s after the batch.
    let app = spawn_app_with(&["--graph-token", TOKEN, "--write-budget", "20/2s"]).await;
    app.graph.set_latency(Duration::from_millis(1500));
    let mut client = app.client.clone();
    let batch = tokio::spawn(async move {
        client
            .batch_create_compliance_script_device_states(batch(
                "deviceComplianceScripts/compliance-batch",
                20,
                Duration::from_secs(10),
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = app.client.clone();
    let err = client
        .create_compliance_script_device_state(single(
            "deviceComplianceScripts/compliance-single",
            Duration::from_secs(3),
        ))
        .await
        .expect_err("no slot before the deadline");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(posts_under(&app, "compliance-single"), 0);
    let results = batch.await.unwrap().unwrap().into_inner().results;
    assert!(
        results
            .iter()
            .all(|r| matches!(r.result, Some(Item::ComplianceScriptDeviceState(_)))),
        "{results:?}"
    );
}

#[tokio::test]
async fn batch_items_never_sent_say_so_and_only_sent_ones_may_be_unknown() {
    // 200 items are 10 `$batch` requests, 4 at a time; Graph answers each in
    // 1.5 s and the call has 2.5 s: the first 4 are answered, the next 4
    // are in flight at the deadline, the last 2 never leave the gateway.
    // The deadline is the gateway's (--request-timeout), not the client's,
    // so the answer sent at the deadline is never raced by the client.
    let app = spawn_app_with(&[
        "--graph-token",
        TOKEN,
        "--write-budget",
        "off",
        "--request-timeout",
        "2500ms",
    ])
    .await;
    app.graph.set_client_ids(ClientIds::Ignore);
    app.graph.set_latency(Duration::from_millis(1500));
    let mut request = batch(
        "deviceComplianceScripts/compliance-slow",
        200,
        Duration::from_millis(2500),
    );
    request.metadata_mut().remove("grpc-timeout");
    let results = app
        .client
        .clone()
        .batch_create_compliance_script_device_states(request)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 200);
    let (mut ok, mut unknown, mut unsent) = (0, 0, 0);
    for r in &results {
        match &r.result {
            Some(Item::ComplianceScriptDeviceState(_)) => ok += 1,
            Some(Item::Status(s)) if s.code == Code::Unknown as i32 => unknown += 1,
            Some(Item::Status(s)) if s.code == Code::DeadlineExceeded as i32 => {
                assert!(s.message.contains("nothing was sent"), "{s:?}");
                unsent += 1;
            }
            other => panic!("unexpected result: {other:?}"),
        }
    }
    let sent_items = posts_under(&app, "compliance-slow");
    assert!(
        ok > 0 && unsent > 0,
        "ok {ok}, unknown {unknown}, unsent {unsent}"
    );
    assert_eq!(
        ok + unknown,
        sent_items,
        "only items that reached Graph are OK or UNKNOWN (ok {ok}, unknown {unknown}, unsent {unsent})"
    );
    assert_eq!(unsent, 200 - sent_items);
}
