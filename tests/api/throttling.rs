//! Intune's throttling as the emulator plays it, and how the gateway copes:
//! a 429 without `Retry-After`, with a decimal one and with 0; throttled
//! items inside a 200 `$batch`; the tenant-wide write limit shared by several
//! apps; and the read budget under the per-app request limit. Pauses are
//! measured between the arrivals in the emulator's record, as lower bounds.

use std::time::Duration;

use runstate_emulator::{Emulator, Limits, Recorded, RetryAfter};
use runstate_gateway::pb::{
    BatchCreateComplianceScriptDeviceStatesRequest, ComplianceScriptDeviceState,
    CreateComplianceScriptDeviceStateRequest, GetComplianceScriptDeviceStateRequest,
    ListComplianceScriptDeviceStatesRequest, RunState,
    compliance_script_device_state_result::Result as Item,
};
use tonic::Request;

use crate::auth::credentials::jwt;
use crate::helpers::{TOKEN, TestApp, assert_budget_refusal, spawn_app_with, start};
use crate::worlds::stored;

const PARENT: &str = "deviceComplianceScripts/c";

fn state(output: &str) -> Option<ComplianceScriptDeviceState> {
    Some(ComplianceScriptDeviceState {
        detection_state: RunState::Success as i32,
        script_output: Some(output.into()),
        ..Default::default()
    })
}

fn create(output: &str) -> Request<CreateComplianceScriptDeviceStateRequest> {
    let mut r = Request::new(CreateComplianceScriptDeviceStateRequest {
        parent: PARENT.into(),
        compliance_script_device_state: state(output),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(30));
    r
}

/// The POSTs the emulator received, oldest first.
fn posts(graph: &Emulator) -> Vec<Recorded> {
    graph
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

/// The time between consecutive requests.
fn gaps(requests: &[Recorded]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|w| w[1].received.duration_since(w[0].received))
        .collect()
}

/// The least a retry waits after a 429 that sets no wait: half the policy's
/// first backoff (200 ms), doubling per attempt.
fn least_backoff(attempt: usize) -> Duration {
    (Duration::from_millis(100) * (1 << attempt.min(16))).min(Duration::from_secs(5))
}

/// The most attempts of a throttled request: it gets at least 20 retries
/// (`MIN_THROTTLE_RETRIES`, whatever --graph-max-retries says) before the
/// deadline ends it.
const MOST_THROTTLED_ATTEMPTS: usize = 21;

/// A gateway without a write budget of its own (the emulator throttles).
async fn unbudgeted() -> TestApp {
    spawn_app_with(&["--graph-token", TOKEN, "--write-budget", "off"]).await
}

/// With Graph taking one write per `window` and answering 429s with
/// `retry_after`, a create fills the window and a second one must wait:
/// the second's attempts as Graph received them.
async fn second_of_a_full_window(
    mut app: TestApp,
    window: Duration,
    retry_after: RetryAfter,
) -> (TestApp, Vec<Recorded>) {
    app.graph.set_write_limit(Some((1, window)));
    app.graph.set_retry_after(retry_after);
    app.client
        .create_compliance_script_device_state(create("first"))
        .await
        .unwrap();
    app.client
        .create_compliance_script_device_state(create("second"))
        .await
        .expect("retried until the window had room");
    let attempts = posts(&app.graph).split_off(1);
    (app, attempts)
}

#[tokio::test]
async fn a_429_without_retry_after_falls_back_to_the_backoff() {
    let (app, attempts) = second_of_a_full_window(
        unbudgeted().await,
        Duration::from_millis(1500),
        RetryAfter::None,
    )
    .await;
    assert!(attempts.len() >= 2, "the second create met a 429 first");
    assert_eq!(app.graph.throttled_count() as usize, attempts.len() - 1);
    for (k, gap) in gaps(&attempts).into_iter().enumerate() {
        assert!(gap >= least_backoff(k), "retry {k} after {gap:?}");
    }
    assert_eq!(stored(&app.graph_url).await.len(), 2);
}

#[tokio::test]
async fn a_decimal_retry_after_is_honoured_rounded_up() {
    // The window frees 1.2 s after the first write; the 429 says `1.2` (or
    // less), which the gateway waits as 2 s.
    let (app, attempts) = second_of_a_full_window(
        unbudgeted().await,
        Duration::from_millis(1200),
        RetryAfter::Decimal,
    )
    .await;
    assert_eq!(attempts.len(), 2, "one 429, then the retry succeeded");
    let gap = gaps(&attempts)[0];
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    assert_eq!(app.graph.throttled_count(), 1);
}

#[tokio::test]
async fn a_zero_retry_after_does_not_spin() {
    let app = spawn_app_with(&[
        "--graph-token",
        TOKEN,
        "--write-budget",
        "off",
        "--graph-max-retries",
        "3",
    ])
    .await;
    let (_app, attempts) =
        second_of_a_full_window(app, Duration::from_secs(2), RetryAfter::Zero).await;
    // A gateway taking 0 at its word would send hundreds here.
    assert!(
        (2..=MOST_THROTTLED_ATTEMPTS).contains(&attempts.len()),
        "{} attempts",
        attempts.len()
    );
    for (k, gap) in gaps(&attempts).into_iter().enumerate() {
        assert!(gap >= least_backoff(k), "retry {k} after {gap:?}");
    }
}

#[tokio::test]
async fn throttled_items_in_a_200_batch_pause_the_tenant_and_only_they_are_retried() {
    // The default write budget (200/20s) never limits here; it holds the pause.
    let app = spawn_app_with(&["--graph-token", TOKEN]).await;
    app.graph.set_write_limit(Some((5, Duration::from_secs(2))));
    let mut r = Request::new(BatchCreateComplianceScriptDeviceStatesRequest {
        parent: PARENT.into(),
        requests: (0..8)
            .map(|n| CreateComplianceScriptDeviceStateRequest {
                compliance_script_device_state: state(&format!("item {n}")),
                ..Default::default()
            })
            .collect(),
    });
    r.set_timeout(Duration::from_secs(30));
    let results = app
        .client
        .clone()
        .batch_create_compliance_script_device_states(r)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 8);
    assert!(
        results
            .iter()
            .all(|r| matches!(r.result, Some(Item::ComplianceScriptDeviceState(_)))),
        "{results:?}"
    );
    let batches = posts(&app.graph);
    assert_eq!(batches.len(), 2, "one batch, then one retry of the rest");
    let items = |r: &Recorded| r.json()["requests"].as_array().unwrap().len();
    assert_eq!(items(&batches[0]), 8);
    assert_eq!(items(&batches[1]), 3, "only the throttled items again");
    assert_eq!(app.graph.throttled_count(), 3);
    // Their Retry-After (2 s, whole seconds) held the tenant.
    let gap = gaps(&batches)[0];
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    let stored = stored(&app.graph_url).await;
    let mut outputs: Vec<_> = stored
        .iter()
        .map(|e| e["scriptOutput"].as_str().unwrap().to_owned())
        .collect();
    outputs.sort();
    outputs.dedup();
    assert_eq!(outputs.len(), 8, "each item stored once");
    assert_eq!(stored.len(), 8);
}

/// Creates from several apps at once, each through its own gateway with this
/// write budget, against a tenant limit of 6 and a per-app limit of 4 per 3 s.
async fn apps_sharing_a_tenant(budget: &str) -> u64 {
    let first = spawn_app_with(&[
        "--graph-token",
        &jwt(serde_json::json!({"tid": "t1", "appid": "app-0"})),
        "--write-budget",
        budget,
    ])
    .await;
    first.graph.set_limits(Limits {
        app_writes: Some((4, Duration::from_secs(3))),
        tenant_writes: Some((6, Duration::from_secs(3))),
        ..Default::default()
    });
    let mut gateways = vec![first];
    let token = jwt(serde_json::json!({"tid": "t1", "azp": "app-1"}));
    let url = gateways[0].graph_url.clone();
    gateways.push(
        start(&[
            "--listen",
            "127.0.0.1:0",
            "--graph-url",
            &url,
            "--graph-token",
            &token,
            "--write-budget",
            budget,
        ])
        .await,
    );
    let calls: Vec<_> = (0..16)
        .map(|n| {
            let mut client = gateways[n % 2].client.clone();
            tokio::spawn(async move {
                let mut r = create(&format!("app {} #{n}", n % 2));
                r.set_timeout(Duration::from_secs(60));
                client.create_compliance_script_device_state(r).await
            })
        })
        .collect();
    for (n, call) in calls.into_iter().enumerate() {
        call.await
            .unwrap()
            .unwrap_or_else(|e| panic!("create {n}: {e:?}"));
    }
    assert_eq!(stored(&url).await.len(), 16);
    gateways[0].graph.throttled_count()
}

#[tokio::test]
async fn budgets_that_share_the_tenant_limit_between_apps_never_trip_it() {
    // Each app under its own limit (4) is not enough: together they pass 6.
    assert!(
        apps_sharing_a_tenant("4/3s").await > 0,
        "the tenant limit throttled"
    );
    // Each app's budget a share of the tenant's (3 + 3): never a 429.
    assert_eq!(apps_sharing_a_tenant("3/3s").await, 0);
}

fn get(name: &str) -> Request<GetComplianceScriptDeviceStateRequest> {
    let mut r = Request::new(GetComplianceScriptDeviceStateRequest { name: name.into() });
    r.set_timeout(Duration::from_secs(60));
    r
}

/// Reads at once: `gets` Gets of `name` and `lists` Lists of its parent.
async fn read_storm(app: &TestApp, name: &str, gets: usize, lists: usize) {
    let mut calls = Vec::new();
    for n in 0..gets + lists {
        let mut client = app.client.clone();
        let name = name.to_owned();
        calls.push(tokio::spawn(async move {
            if n < gets {
                client
                    .get_compliance_script_device_state(get(&name))
                    .await
                    .map(|_| ())
            } else {
                let mut r = Request::new(ListComplianceScriptDeviceStatesRequest {
                    parent: PARENT.into(),
                    ..Default::default()
                });
                r.set_timeout(Duration::from_secs(60));
                client
                    .list_compliance_script_device_states(r)
                    .await
                    .map(|_| ())
            }
        }));
    }
    for (n, call) in calls.into_iter().enumerate() {
        call.await
            .unwrap()
            .unwrap_or_else(|e| panic!("read {n}: {e:?}"));
    }
}

/// A gateway with these flags whose emulator allows 5 requests per 2 s per
/// app, and the name of one stored state.
async fn under_a_request_limit(flags: &[&str]) -> (TestApp, String) {
    let mut app = spawn_app_with(flags).await;
    app.graph.set_limits(Limits {
        app_requests: Some((5, Duration::from_secs(2))),
        ..Default::default()
    });
    let created = app
        .client
        .create_compliance_script_device_state(create("read me"))
        .await
        .unwrap()
        .into_inner();
    (app, created.name)
}

#[tokio::test]
async fn a_read_budget_keeps_gets_and_lists_under_the_request_limit() {
    let (app, name) =
        under_a_request_limit(&["--graph-token", TOKEN, "--read-budget", "5/2s"]).await;
    read_storm(&app, &name, 9, 3).await;
    assert_eq!(app.graph.answered(429), 0, "Graph never throttled");
    assert_eq!(app.graph.requests().len(), 13);
    // Without it the same storm is throttled (and retried).
    let (app, name) = under_a_request_limit(&["--graph-token", TOKEN]).await;
    read_storm(&app, &name, 9, 3).await;
    assert!(app.graph.answered(429) > 0, "the storm passed the limit");
}

#[tokio::test]
async fn a_read_past_the_deadline_is_refused_at_once_with_retry_info() {
    let (mut app, name) =
        under_a_request_limit(&["--graph-token", TOKEN, "--read-budget", "2/60s"]).await;
    // The create took one slot, this Get the other.
    app.client
        .get_compliance_script_device_state(get(&name))
        .await
        .unwrap();
    let mut r = get(&name);
    r.set_timeout(Duration::from_secs(3));
    let err = app
        .client
        .get_compliance_script_device_state(r)
        .await
        .unwrap_err();
    assert_budget_refusal(&err, "READ_BUDGET_EXHAUSTED", Duration::from_secs(3));
    assert_eq!(
        app.graph.requests().len(),
        2,
        "the refused Get never reached Graph"
    );
}
