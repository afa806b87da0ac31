//! A shared state store that goes away or comes back: two replicas (the
//! real binary) share one redis-server on loopback, in front of an emulator
//! that ignores client ids, so only the shared records keep a request id
//! from writing twice. Redis is stopped (SIGSTOP), killed (SIGKILL) and
//! restarted while the same request ids go to both replicas.
//!
//! Like `replicas`, these need `redis-server` (skipped without it unless
//! `REQUIRE_REDIS=1`).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use runstate_gateway::pb::{ComplianceScriptDeviceState, ListComplianceScriptDeviceStatesRequest};
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use runstate_emulator::{Emulator, RunningEmulator};

use super::replicas::{Gateway, RedisServer, create, emulator, gateway, posts};

type Answer = Result<ComplianceScriptDeviceState, Status>;

/// Sends every id to every replica at once (the id is also the state's
/// `script_output`, so each entity names its request id).
fn round(gateways: &[Gateway], ids: &[String]) -> Vec<JoinHandle<(String, Answer)>> {
    let mut calls = Vec::new();
    for id in ids {
        for g in gateways {
            let mut client = g.client.clone();
            let id = id.clone();
            calls.push(tokio::spawn(async move {
                let answer = client
                    .create_compliance_script_device_state(create(&id, &id))
                    .await
                    .map(|r| r.into_inner());
                (id, answer)
            }));
        }
    }
    calls
}

/// Every answer of a round, by request id; returns how many were refused.
async fn collect(
    calls: Vec<JoinHandle<(String, Answer)>>,
    answers: &mut HashMap<String, Vec<Answer>>,
) -> usize {
    let mut refused = 0;
    for call in calls {
        let (id, answer) = call.await.unwrap();
        if let Err(status) = &answer {
            assert_refused(status);
            refused += 1;
        }
        answers.entry(id).or_default().push(answer);
    }
    refused
}

/// The only failure allowed: UNAVAILABLE, retryable, saying why.
fn assert_refused(status: &Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "STATE_STORE_UNAVAILABLE", "{status:?}");
    assert!(status.get_details_retry_info().is_some(), "RetryInfo");
    assert!(status.message().contains("nothing was sent"), "{status:?}");
}

/// Sends rounds until every call of one round succeeds (at most 30 s).
async fn until_all_succeed(
    gateways: &[Gateway],
    ids: &[String],
    answers: &mut HashMap<String, Vec<Answer>>,
) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if collect(round(gateways, ids), answers).await == 0 {
            return;
        }
        assert!(Instant::now() < until, "calls still refused after 30 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The states under the test's parent, by `script_output`, read from Graph
/// (a list goes to the emulator, not to Redis).
async fn entities(gateway: &Gateway) -> HashMap<String, usize> {
    let mut client = gateway.client.clone();
    let mut request = tonic::Request::new(ListComplianceScriptDeviceStatesRequest {
        parent: "deviceComplianceScripts/c".into(),
        page_size: 999,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(30));
    let page = client
        .list_compliance_script_device_states(request)
        .await
        .expect("the list succeeds")
        .into_inner();
    assert!(page.next_page_token.is_empty(), "one page holds them all");
    let mut counts = HashMap::new();
    for s in page.compliance_script_device_states {
        *counts
            .entry(s.script_output.unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

/// Each request id has one entity, and every successful answer for it
/// names that entity.
async fn assert_once_each(
    gateway: &Gateway,
    ids: &[String],
    answers: &HashMap<String, Vec<Answer>>,
) {
    let counts = entities(gateway).await;
    for id in ids {
        assert_eq!(counts.get(id), Some(&1), "entities for request id {id}");
        let names: HashSet<&str> = answers[id]
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names.len(), 1, "answers for request id {id}: {names:?}");
    }
    assert_eq!(counts.values().sum::<usize>(), ids.len(), "no other entity");
}

/// An emulator that ignores client ids (with `latency` on every answer) and
/// two replicas sharing `redis`, started with `--state-store-outage
/// refuse` when `refuse` and `extra` flags.
async fn replicas(
    redis: &RedisServer,
    latency: Duration,
    refuse: bool,
    extra: &[&str],
) -> (Emulator, RunningEmulator, [Gateway; 2]) {
    let (graph, running) = emulator().await;
    graph.set_latency(latency);
    let store = redis.url();
    let mut flags = vec![
        "--state-store",
        &store,
        "--graph-client-ids",
        "ignore",
        "--replicas",
        "2",
    ];
    if refuse {
        flags.extend(["--state-store-outage", "refuse"]);
    }
    flags.extend(extra);
    let url = running.base_url();
    let gateways = [gateway(&url, &flags).await, gateway(&url, &flags).await];
    (graph, running, gateways)
}

fn new_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

#[tokio::test]
async fn refusing_through_a_redis_stop_and_kill_writes_each_request_id_once() {
    let Some(mut redis) = RedisServer::start_persistent() else {
        return;
    };
    // Slow answers keep the first copies at Graph when Redis goes away.
    let (graph, _running, gateways) = replicas(
        &redis,
        Duration::from_millis(300),
        true,
        &["--write-budget", "off"],
    )
    .await;
    let mut answers = HashMap::new();

    // SIGSTOP while the first copies are at Graph; every id again while
    // Redis is stopped; then Redis resumes.
    let stopped = new_ids(20);
    let first = round(&gateways, &stopped);
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.signal("STOP");
    let mut refused = collect(first, &mut answers).await;
    refused += collect(round(&gateways, &stopped), &mut answers).await;
    assert!(refused > 0, "calls were refused while Redis was stopped");
    assert!(posts(&graph) <= stopped.len(), "refused calls sent nothing");
    redis.signal("CONT");
    until_all_succeed(&gateways, &stopped, &mut answers).await;

    // SIGKILL while the first copies are at Graph; every id again while
    // Redis is down; then it restarts (with its data).
    let killed = new_ids(20);
    let first = round(&gateways, &killed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop();
    let mut refused = collect(first, &mut answers).await;
    refused += collect(round(&gateways, &killed), &mut answers).await;
    assert!(refused > 0, "calls were refused while Redis was down");
    redis.restart();
    until_all_succeed(&gateways, &killed, &mut answers).await;

    let all: Vec<String> = stopped.iter().chain(&killed).cloned().collect();
    assert_once_each(&gateways[0], &all, &answers).await;
    assert_eq!(posts(&graph), all.len(), "one POST per request id");
}

#[tokio::test]
async fn right_after_a_redis_restart_each_request_id_is_written_once() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    // Slow answers make the two copies of each call overlap. The default
    // outage mode: serving locally, a replica that counted Redis down
    // would write a second entity.
    let (graph, _running, gateways) = replicas(
        &redis,
        Duration::from_millis(150),
        false,
        &["--write-budget", "off"],
    )
    .await;
    let mut answers = HashMap::new();
    // Each replica holds a connection to Redis...
    let warm = new_ids(1);
    assert_eq!(collect(round(&gateways, &warm), &mut answers).await, 0);
    assert!(!redis.keys("runstate:rid:*").is_empty(), "records in Redis");
    // ...which Redis drops as it is killed; it is back (answering PING)
    // before the next call.
    redis.stop();
    redis.restart();
    let burst = new_ids(20);
    assert_eq!(collect(round(&gateways, &burst), &mut answers).await, 0);

    let all: Vec<String> = warm.iter().chain(&burst).cloned().collect();
    assert_once_each(&gateways[0], &all, &answers).await;
    assert_eq!(posts(&graph), all.len(), "one POST per request id");
}

#[tokio::test]
async fn a_create_that_applied_nothing_frees_its_request_id_for_every_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (graph, _running, gateways) = replicas(&redis, Duration::ZERO, true, &[]).await;
    // The first create fails for good, applying nothing.
    graph.inject(runstate_emulator::Fault::status(404).times(1));
    let id = uuid::Uuid::new_v4().to_string();
    let mut first = gateways[0].client.clone();
    let err = first
        .create_compliance_script_device_state(create(&id, "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A retry on the other replica is not held up by the first call's claim.
    let mut other = gateways[1].client.clone();
    let mut retry = create(&id, "x");
    retry.set_timeout(Duration::from_secs(3));
    let created = other
        .create_compliance_script_device_state(retry)
        .await
        .expect("the id was released")
        .into_inner();
    assert!(!created.name.is_empty());
    assert_eq!(posts(&graph), 2);
}

/// An item's `google.rpc.Status` is the refusal, with its reason.
fn assert_item_refused(st: &tonic_types::pb::Status) {
    use prost::Message;
    assert_eq!(st.code, Code::Unavailable as i32, "{}", st.message);
    let info = st
        .details
        .iter()
        .find(|d| d.type_url.ends_with("google.rpc.ErrorInfo"))
        .map(|d| tonic_types::pb::ErrorInfo::decode(d.value.as_slice()).unwrap())
        .expect("ErrorInfo");
    assert_eq!(info.reason, "STATE_STORE_UNAVAILABLE");
    assert!(
        st.details
            .iter()
            .any(|d| d.type_url.ends_with("google.rpc.RetryInfo")),
        "RetryInfo"
    );
}

#[tokio::test]
async fn refusing_covers_batch_and_stream_items_with_a_request_id() {
    use runstate_gateway::pb::{
        BatchCreateComplianceScriptDeviceStatesRequest, ScriptDeviceState,
        StreamCreateScriptDeviceStatesRequest,
        compliance_script_device_state_result::Result as Item,
        stream_create_script_device_states_response::Result as StreamItem,
    };
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (graph, running) = emulator().await;
    let url = running.base_url();
    let store = redis.url();
    let flags = ["--state-store", &store, "--state-store-outage", "refuse"];
    let g = gateway(&url, &flags).await;
    redis.stop();

    // A batch: two items with request ids are refused; one without is made.
    let with_id = |id: &str| create(id, "b").into_inner();
    let mut without = with_id("");
    without.request_id.clear();
    let mut client = g.client.clone();
    let mut batch = tonic::Request::new(BatchCreateComplianceScriptDeviceStatesRequest {
        parent: String::new(),
        requests: vec![
            with_id(&uuid::Uuid::new_v4().to_string()),
            without,
            with_id(&uuid::Uuid::new_v4().to_string()),
        ],
    });
    batch.set_timeout(Duration::from_secs(30));
    let results = client
        .batch_create_compliance_script_device_states(batch)
        .await
        .expect("the batch is answered item by item")
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    for i in [0, 2] {
        match results[i].result.as_ref().unwrap() {
            Item::Status(st) => assert_item_refused(st),
            Item::ComplianceScriptDeviceState(s) => panic!("item {i} was created: {s:?}"),
        }
    }
    assert!(matches!(
        results[1].result,
        Some(Item::ComplianceScriptDeviceState(_))
    ));

    // A stream item with a request id is refused too, and the stream goes on.
    let item = StreamCreateScriptDeviceStatesRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let mut answers = client
        .stream_create_script_device_states(tokio_stream::iter(vec![item]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    match answer.result.unwrap() {
        StreamItem::Status(st) => assert_item_refused(&st),
        StreamItem::ScriptDeviceState(s) => panic!("the stream item was created: {s:?}"),
    }
    assert!(answers.message().await.unwrap().is_none());

    // Only the create without a request id reached Graph: one `$batch`
    // holding one item.
    let sent: Vec<_> = graph
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].path.ends_with("/$batch"), "{}", sent[0].path);
    let items = sent[0].json()["requests"].as_array().map_or(0, Vec::len);
    assert_eq!(items, 1);
}

#[tokio::test]
async fn refusing_a_claim_whose_replica_died_answers_outcome_unknown_not_a_second_write() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The first create is still at Graph when its replica dies.
    let (graph, _running, [dying, other]) =
        replicas(&redis, Duration::from_secs(2), true, &[]).await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut first = create(&id, "x");
    first.set_timeout(Duration::from_secs(1));
    let mut client = dying.client.clone();
    let first =
        tokio::spawn(async move { client.create_compliance_script_device_state(first).await });
    let until = Instant::now() + Duration::from_secs(10);
    while posts(&graph) == 0 {
        assert!(Instant::now() < until, "the first create reached Graph");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(dying);
    assert!(first.await.unwrap().is_err(), "its replica died");

    // Its claim outlives its deadline; once that is long past, a retry
    // elsewhere says the create may have been applied.
    let mut retry = create(&id, "x");
    retry.set_timeout(Duration::from_secs(20));
    let mut client = other.client.clone();
    let err = client
        .create_compliance_script_device_state(retry)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "OUTCOME_UNKNOWN");
    assert!(
        err.message().contains("did not record its answer"),
        "{err:?}"
    );
    assert_eq!(posts(&graph), 1, "never a second POST");
}
