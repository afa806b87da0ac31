//! The write budget and throttling storms: writes wait for a slot instead of
//! provoking 429s, and nothing is written twice on the way.

use std::{collections::HashSet, time::Duration};

use runstate_emulator::{ClientIds, Fault};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TOKEN, assert_budget_refusal, spawn_app_with};
use crate::replicas::{create, posts};
use crate::worlds::stored;

#[tokio::test]
async fn a_storm_of_throttling_writes_each_create_exactly_once() {
    // No budget of its own: the emulator's limit and injected faults throttle.
    let app = spawn_app_with(&["--graph-token", TOKEN, "--write-budget", "off"]).await;
    app.graph.set_client_ids(ClientIds::Ignore);
    app.graph
        .set_write_limit(Some((100, Duration::from_secs(1))));
    app.graph
        .inject(Fault::status(429).method("POST").retry_after("0").times(20));
    app.graph
        .inject(Fault::status(503).method("POST").retry_after("0").times(20));
    let workers: Vec<_> = (0..25)
        .map(|w| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                for n in 0..20 {
                    let id = uuid::Uuid::new_v4().to_string();
                    let mut r = create(&id, &format!("{w}-{n}"));
                    r.set_timeout(Duration::from_secs(120));
                    client
                        .create_compliance_script_device_state(r)
                        .await
                        .unwrap_or_else(|e| panic!("create {w}-{n}: {e:?}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let entities = stored(&app.graph_url).await;
    assert_eq!(entities.len(), 500);
    let outputs: HashSet<_> = entities
        .iter()
        .map(|e| e["scriptOutput"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outputs.len(), 500, "each create stored once");
    assert!(posts(&app.graph) > 500, "the storm made the gateway retry");
}

#[tokio::test]
async fn a_budget_matching_graphs_limit_never_trips_it() {
    let app = spawn_app_with(&["--graph-token", TOKEN, "--write-budget", "50/5s"]).await;
    app.graph
        .set_write_limit(Some((50, Duration::from_secs(5))));
    let calls: Vec<_> = (0..150)
        .map(|n| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                let r = create(&uuid::Uuid::new_v4().to_string(), &n.to_string());
                client.create_compliance_script_device_state(r).await
            })
        })
        .collect();
    for (n, call) in calls.into_iter().enumerate() {
        call.await
            .unwrap()
            .unwrap_or_else(|e| panic!("create {n}: {e:?}"));
    }
    assert_eq!(app.graph.throttled_count(), 0, "Graph never answered 429");
    assert_eq!(stored(&app.graph_url).await.len(), 150);
}

#[tokio::test]
async fn a_wait_past_the_deadline_is_refused_at_once_with_retry_info() {
    let mut app = spawn_app_with(&["--graph-token", TOKEN, "--write-budget", "2/60s"]).await;
    for n in 0..2 {
        app.client
            .create_compliance_script_device_state(create("", &n.to_string()))
            .await
            .unwrap();
    }
    let mut r = create("", "third");
    r.set_timeout(Duration::from_secs(5));
    let err = app
        .client
        .create_compliance_script_device_state(r)
        .await
        .unwrap_err();
    assert_budget_refusal(&err, "WRITE_BUDGET_EXHAUSTED", Duration::from_secs(5));
    assert_eq!(posts(&app.graph), 2, "the third write never reached Graph");
}

#[tokio::test]
async fn a_429_pauses_every_write_for_its_retry_after() {
    let app = spawn_app_with(&["--graph-token", TOKEN]).await;
    app.graph
        .inject(Fault::status(429).method("POST").retry_after("30").times(1));
    // The first write meets the 429 (and, with a short deadline, gives up).
    let mut first = app.client.clone();
    let mut r = create("", "first");
    r.set_timeout(Duration::from_secs(5));
    let err = first
        .create_compliance_script_device_state(r)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Another write, which met no 429 itself, is held too.
    let mut other = app.client.clone();
    let mut r = create("", "other");
    r.set_timeout(Duration::from_secs(5));
    let err = other
        .create_compliance_script_device_state(r)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let info = err.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "WRITE_BUDGET_EXHAUSTED");
    assert_eq!(posts(&app.graph), 1, "held writes never reached Graph");
}
