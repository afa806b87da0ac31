//! Exactly-once creates in each world Graph may be in: it honours a client
//! id, ignores it, or refuses it. The gateway runs in its default `auto`
//! mode and must be right in all three.

use std::time::Duration;

use runstate_emulator::ClientIds;
use tonic::Code;

use crate::helpers::{TOKEN, TestApp, spawn_app_with};
use crate::idempotency::assert_outcome_unknown;
use crate::replicas::create;

const COLLECTION: &str = "deviceComplianceScripts/c/deviceRunStates";

/// The stored entities of the test collection (following `@odata.nextLink`).
pub async fn stored(graph_url: &str) -> Vec<serde_json::Value> {
    let mut url = format!("{graph_url}/deviceManagement/{COLLECTION}");
    let mut all = Vec::new();
    loop {
        let text = reqwest::Client::new()
            .get(&url)
            .bearer_auth("t")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        all.extend(body["value"].as_array().unwrap().iter().cloned());
        match body["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => return all,
        }
    }
}

use crate::replicas::posts;

async fn app_in(world: ClientIds) -> TestApp {
    let app = spawn_app_with(&["--graph-token", TOKEN]).await;
    app.graph.set_client_ids(world);
    app
}

async fn replays_sequentially_and_concurrently(world: ClientIds) {
    let mut app = app_in(world).await;
    let id = uuid::Uuid::new_v4().to_string();
    let first = app
        .client
        .create_compliance_script_device_state(create(&id, "seq"))
        .await
        .unwrap_or_else(|e| panic!("{world:?}: {e:?}"))
        .into_inner();
    let again = app
        .client
        .create_compliance_script_device_state(create(&id, "seq"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "{world:?}");

    app.graph.set_latency(Duration::from_millis(200));
    let id = uuid::Uuid::new_v4().to_string();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut c = app.client.clone();
            let r = create(&id, "conc");
            tokio::spawn(async move { c.create_compliance_script_device_state(r).await })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner());
    }
    assert!(answers.windows(2).all(|p| p[0] == p[1]), "{world:?}");
    assert_eq!(stored(&app.graph_url).await.len(), 2, "{world:?}");
}

#[tokio::test]
async fn honour_replays_create_once() {
    replays_sequentially_and_concurrently(ClientIds::Honour).await;
}

#[tokio::test]
async fn ignore_replays_create_once() {
    replays_sequentially_and_concurrently(ClientIds::Ignore).await;
}

#[tokio::test]
async fn reject_replays_create_once() {
    replays_sequentially_and_concurrently(ClientIds::Reject).await;
}

#[tokio::test]
async fn honour_resolves_a_lost_answer_and_survives_a_restart() {
    let mut app = app_in(ClientIds::Honour).await;
    // One create teaches the gateway that ids are kept.
    app.client
        .create_compliance_script_device_state(create(&uuid::Uuid::new_v4().to_string(), "l"))
        .await
        .unwrap();
    app.lose_the_next_answer();
    let id = uuid::Uuid::new_v4().to_string();
    let resolved = app
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.id, id);
    // A restarted gateway (no records) meets its own first copy.
    let mut restarted = crate::helpers::start(&[
        "--listen",
        "127.0.0.1:0",
        "--graph-url",
        &app.graph_url,
        "--graph-token",
        TOKEN,
    ])
    .await;
    let again = restarted
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, resolved);
    assert_eq!(stored(&app.graph_url).await.len(), 2, "one entity each");
    // The same request id for another request is refused...
    let reused = restarted
        .client
        .create_compliance_script_device_state(create(&id, "different"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    // ...and a create whose chosen id is taken by an entity with other
    // content is ALREADY_EXISTS, not a success.
    let mut taken = create(&uuid::Uuid::new_v4().to_string(), "different").into_inner();
    taken.compliance_script_device_state_id = id.clone();
    let other = restarted
        .client
        .create_compliance_script_device_state(taken)
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
    assert_eq!(stored(&app.graph_url).await.len(), 2);
}

#[tokio::test]
async fn ignore_answers_outcome_unknown_and_never_posts_twice() {
    let mut app = app_in(ClientIds::Ignore).await;
    // Learned or not, a lost answer cannot be resolved when ids are ignored.
    for round in 0..2 {
        app.lose_the_next_answer();
        let before = posts(&app.graph);
        let id = uuid::Uuid::new_v4().to_string();
        let err = app
            .client
            .create_compliance_script_device_state(create(&id, "a"))
            .await
            .unwrap_err();
        assert_outcome_unknown(&err);
        let replay = app
            .client
            .create_compliance_script_device_state(create(&id, "a"))
            .await
            .unwrap_err();
        assert_outcome_unknown(&replay);
        assert_eq!(posts(&app.graph), before + 1, "round {round}: one POST");
        assert_eq!(stored(&app.graph_url).await.len(), round + 1);
    }
    // The id the gateway wished for was not kept: the answer carries Graph's.
    let mut req = create(&uuid::Uuid::new_v4().to_string(), "b").into_inner();
    req.compliance_script_device_state_id = "wished-for".into();
    let got = app
        .client
        .create_compliance_script_device_state(req)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(got.id, "wished-for");
    assert!(got.name.ends_with(&got.id));
}

#[tokio::test]
async fn reject_creates_succeed_without_the_id() {
    let mut app = app_in(ClientIds::Reject).await;
    let id = uuid::Uuid::new_v4().to_string();
    let first = app
        .client
        .create_compliance_script_device_state(create(&id, "a"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(first.id, id);
    let bodies: Vec<_> = app.requests().iter().map(|r| r.json()).collect();
    assert_eq!(bodies.len(), 2, "refused once, then sent without the id");
    assert_eq!(bodies[0]["id"], id);
    assert!(bodies[1].get("id").is_none());
    // Remembered: the next create sends no id at all.
    app.graph.clear_requests();
    app.client
        .create_compliance_script_device_state(create(&uuid::Uuid::new_v4().to_string(), "b"))
        .await
        .unwrap();
    let bodies: Vec<_> = app.requests().iter().map(|r| r.json()).collect();
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].get("id").is_none());
    // A lost answer is unknown, and never sent twice.
    app.lose_the_next_answer();
    app.graph.clear_requests();
    let err = app
        .client
        .create_compliance_script_device_state(create(&uuid::Uuid::new_v4().to_string(), "c"))
        .await
        .unwrap_err();
    assert_outcome_unknown(&err);
    assert_eq!(posts(&app.graph), 1);
    assert_eq!(stored(&app.graph_url).await.len(), 3);
}
