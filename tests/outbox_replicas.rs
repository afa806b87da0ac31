//! Replicas sharing one PostgreSQL outbox: two gateway processes (the real
//! binary) in front of one emulator whose write limit is the gateways'
//! budget. One drains the tenant at a time; when it is SIGKILLed the other
//! takes the lease over and finishes; nothing is lost or doubled, and Graph
//! answers no 429. Also: `/readyz` while the database is down.
//!
//! These tests need PostgreSQL (`apt-get install postgresql`). Without it
//! they are skipped with a message, unless `REQUIRE_POSTGRES=1` (CI) makes
//! that a failure.

#[allow(dead_code)]
#[path = "support/binary.rs"]
mod binary;
#[path = "support/outbox.rs"]
mod outbox;
#[allow(dead_code)]
#[path = "support/postgres.rs"]
mod pg_server;

use std::time::{Duration, Instant};

use prost::Message;
use runstate_gateway::pb::{
    SubmitRunStatesRequest, SubmitRunStatesResponse,
    longrunning::{
        GetOperationRequest, WaitOperationRequest, operation, operations_client::OperationsClient,
    },
    run_state_service_client::RunStateServiceClient,
    run_state_write_result,
};

use binary::{Gateway, spawn_args};
use outbox::{emulator_json, metadata, stored, write};
use pg_server::PgServer;

/// The emulator's write limit and the gateways' budget.
const BUDGET: &str = "40/2s";

/// An emulator that keeps client ids and takes the gateways' budget.
fn emulator() -> Gateway {
    spawn_args(&[
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--client-ids",
        "honour",
        "--write-limit",
        BUDGET,
        "--log-format",
        "json",
    ])
}

fn gateway(emulator: &Gateway, outbox: &str) -> Gateway {
    spawn_args(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--graph-url",
        &emulator.emulator_url,
        "--graph-token",
        "replica-test-token",
        "--graph-client-ids",
        "honour",
        "--write-budget",
        BUDGET,
        "--outbox",
        outbox,
    ])
}

async fn get(g: &Gateway, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{}{path}", g.admin.unwrap())).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A counter of the gateway's metrics (0 before its first increment).
async fn counter(g: &Gateway, name: &str) -> f64 {
    let (_, text) = get(g, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn two_replicas_drain_one_tenant_one_at_a_time_and_hand_over_on_sigkill() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let emulator = emulator();
    let url = server.url();
    let mut replicas = vec![gateway(&emulator, &url), gateway(&emulator, &url)];
    // Any replica accepts: half the writes through each.
    let mut names = Vec::new();
    for (i, g) in replicas.iter().enumerate() {
        let mut client = RunStateServiceClient::connect(g.endpoint()).await.unwrap();
        let from = i as u32 * 100 + 1;
        let op = client
            .submit_run_states(SubmitRunStatesRequest {
                writes: (from..from + 100).map(write).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        names.push(op.name);
    }
    // Wait until some writes are delivered; only one replica has sent any.
    let started = Instant::now();
    let holder = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing delivered"
        );
        let sent = [
            counter(&replicas[0], "runstate_outbox_delivered_total").await,
            counter(&replicas[1], "runstate_outbox_delivered_total").await,
        ];
        if sent[0] + sent[1] >= 30.0 {
            assert!(sent[0] == 0.0 || sent[1] == 0.0, "both drained: {sent:?}");
            break if sent[0] > 0.0 { 0 } else { 1 };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut killed = replicas.remove(holder);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let survivor = &replicas[0];
    let before = counter(survivor, "runstate_outbox_delivered_total").await;
    assert_eq!(
        before, 0.0,
        "the other replica drained while the holder lived"
    );
    // The survivor takes the lease once the killed holder's expires, and
    // finishes both operations (each caller sees its own through any replica).
    let mut ops = OperationsClient::connect(survivor.endpoint())
        .await
        .unwrap();
    let mut results = Vec::new();
    for name in &names {
        let mut done = None;
        for _ in 0..30 {
            let now = ops
                .wait_operation(WaitOperationRequest {
                    name: name.clone(),
                    timeout: Some(prost_types::Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            if now.done {
                done = Some(now);
                break;
            }
        }
        let done = done.unwrap_or_else(|| panic!("{name} never finished"));
        assert_eq!(
            metadata(&done).delivered_count,
            100,
            "{:?}",
            metadata(&done)
        );
        let Some(operation::Result::Response(any)) = &done.result else {
            panic!("no response: {done:?}");
        };
        results.extend(
            SubmitRunStatesResponse::decode(any.value.as_slice())
                .unwrap()
                .results,
        );
    }
    assert_eq!(results.len(), 200);
    assert!(
        results
            .iter()
            .all(|r| matches!(r.result, Some(run_state_write_result::Result::Name(_)))),
        "every write delivered"
    );
    assert!(counter(survivor, "runstate_outbox_delivered_total").await > 0.0);
    // Nothing lost, nothing doubled, and never over the budget.
    let graph = stored(&emulator).await;
    assert_eq!(graph.len(), 200);
    assert!(graph.values().all(|&n| n == 1), "doubled: {graph:?}");
    let settings = emulator_json(&emulator, "/_emulator/settings").await;
    assert_eq!(settings["throttled"], 0, "{settings}");
    assert_eq!(settings["answered_429"], 0, "{settings}");
    // The first operation is also visible through it by its name.
    let again = ops
        .get_operation(GetOperationRequest {
            name: names[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.done);
}

/// A replica stopped with SIGTERM records the groups it has in flight and
/// gives its lease up: nothing stays marked in flight, and a replica
/// started next finds the tenant free at once.
#[tokio::test]
async fn a_replica_stopped_with_sigterm_records_its_groups_and_hands_over_its_lease() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let emulator = emulator();
    let url = server.url();
    let mut first = gateway(&emulator, &url);
    let mut client = RunStateServiceClient::connect(first.endpoint())
        .await
        .unwrap();
    let op = client
        .submit_run_states(SubmitRunStatesRequest {
            writes: (1..=100).map(write).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    while counter(&first, "runstate_outbox_delivered_total").await < 10.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.psql("SELECT count(*) FROM runstate_outbox_leases"),
        "1"
    );
    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(60)).expect("it stops");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        server.psql("SELECT count(*) FROM runstate_outbox_leases"),
        "0",
        "the lease was released"
    );
    assert_eq!(
        server.psql("SELECT count(*) FROM runstate_outbox_queue WHERE epoch <> 0"),
        "0",
        "no write left marked in flight"
    );
    // The next replica finishes the operation; every write once.
    let next = gateway(&emulator, &url);
    let mut ops = OperationsClient::connect(next.endpoint()).await.unwrap();
    let mut done = None;
    for _ in 0..30 {
        let now = ops
            .wait_operation(WaitOperationRequest {
                name: op.name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        if now.done {
            done = Some(now);
            break;
        }
    }
    let done = done.expect("the operation finished");
    assert_eq!(
        metadata(&done).delivered_count,
        100,
        "{:?}",
        metadata(&done)
    );
    let graph = stored(&emulator).await;
    assert_eq!(graph.len(), 100);
    // (The next replica's budget is its own: without a shared one, Redis,
    // its first window may meet 429s for the writes the first sent in it;
    // they are retried, and each write is still stored once.)
    assert!(graph.values().all(|&n| n == 1), "doubled: {graph:?}");
}

#[tokio::test]
async fn readyz_fails_while_the_database_is_down_and_calls_do_not_hang() {
    let Some(mut server) = PgServer::start() else {
        return;
    };
    let emulator = spawn_args(&[
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let g = gateway(&emulator, &server.url());
    assert_eq!(get(&g, "/readyz").await.0, 200);
    server.stop();
    let started = Instant::now();
    loop {
        if get(&g, "/readyz").await.0 == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/readyz stayed ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A submission answers UNAVAILABLE instead of waiting on the database.
    let mut client = RunStateServiceClient::connect(g.endpoint()).await.unwrap();
    let mut request = tonic::Request::new(SubmitRunStatesRequest {
        writes: vec![write(1)],
    });
    request.set_timeout(Duration::from_secs(60));
    let err = client.submit_run_states(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(!err.message().contains("password"), "{err:?}");
    server.restart();
    let started = Instant::now();
    while get(&g, "/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/readyz stayed unready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .submit_run_states(SubmitRunStatesRequest {
            writes: vec![write(1)],
        })
        .await
        .unwrap();
}
