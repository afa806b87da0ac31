//! The outbox across a SIGKILL: the real binary in front of an emulator of
//! its own (the `emulator` command, which outlives the gateway), killed
//! while it drains and started again on the same store. Nothing accepted
//! is lost, nothing is written twice; where Graph ignores client ids, a
//! create in flight at the kill ends as OUTCOME_UNKNOWN and is never sent
//! again.

#[allow(dead_code)]
#[path = "support/binary.rs"]
mod binary;
#[path = "support/outbox.rs"]
mod outbox;
#[allow(dead_code)]
#[path = "support/postgres.rs"]
mod pg_server;

use std::{collections::HashMap, time::Duration};

use prost::Message;
use runstate_gateway::pb::{
    SubmitRunStatesRequest, SubmitRunStatesResponse,
    longrunning::{
        GetOperationRequest, WaitOperationRequest, operation, operations_client::OperationsClient,
    },
    run_state_service_client::RunStateServiceClient,
    run_state_write_result,
};
use tonic_types::StatusExt;

use binary::{Gateway, spawn_args};
use outbox::{emulator_json, metadata, stored, write};
use pg_server::PgServer;

/// Enough that writes are still queued, not only in flight, at the kill:
/// the drain has two groups (160 writes) in flight at once.
const WRITES: u32 = 600;

/// Where a test's outbox lives (the scenarios take it as a parameter).
/// With PostgreSQL the restarted gateway is a new lease holder: it takes
/// the tenant over once the killed one's lease expires.
enum Store {
    Redb(std::path::PathBuf),
    Postgres(PgServer),
}

impl Store {
    fn redb() -> Self {
        Store::Redb(std::env::temp_dir().join(format!(
            "runstate-crash-{}/outbox.redb",
            uuid::Uuid::new_v4()
        )))
    }

    /// `None` (after saying why) where PostgreSQL is not installed and
    /// `REQUIRE_POSTGRES` is not `1`.
    fn postgres() -> Option<Self> {
        PgServer::start().map(Store::Postgres)
    }

    fn flag(&self) -> String {
        match self {
            Store::Redb(path) => path.display().to_string(),
            Store::Postgres(server) => server.url(),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        match self {
            Store::Redb(path) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Store::Postgres(_) => {}
        }
    }
}

fn gateway(emulator: &Gateway, store: &Store, client_ids: &str) -> Gateway {
    gateway_with(emulator, store, client_ids, &[])
}

fn gateway_with(emulator: &Gateway, store: &Store, client_ids: &str, extra: &[&str]) -> Gateway {
    let graph_url = emulator.emulator_url.clone();
    let outbox = store.flag();
    spawn_args(
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--graph-url",
            &graph_url,
            "--graph-token",
            "crash-test-token",
            "--graph-client-ids",
            client_ids,
            "--write-budget",
            "off",
            "--outbox",
            &outbox,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    )
}

async fn ops(g: &Gateway) -> OperationsClient<tonic::transport::Channel> {
    OperationsClient::connect(g.endpoint()).await.unwrap()
}

/// How often each error code was sent in a create (alone or in a `$batch`).
fn creates_sent(record: &[serde_json::Value]) -> HashMap<i64, usize> {
    let mut sent = HashMap::new();
    let mut count = |body: &serde_json::Value| {
        if let Some(code) = body["errorCode"].as_i64() {
            *sent.entry(code).or_default() += 1;
        }
    };
    for r in record {
        let body: serde_json::Value =
            serde_json::from_str(r["body"].as_str().unwrap_or_default()).unwrap_or_default();
        if r["path"].as_str().unwrap_or_default().ends_with("$batch") {
            for item in body["requests"].as_array().into_iter().flatten() {
                if item["method"] == "POST" {
                    count(&item["body"]);
                }
            }
        } else if r["method"] == "POST" {
            count(&body);
        }
    }
    sent
}

async fn killed_mid_drain(store: Store, world: &str) {
    let emulator = spawn_args(&[
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--client-ids",
        world,
        "--log-format",
        "json",
    ]);
    // Slow answers, so the kill finds writes in flight.
    emulator
        .emulator_settings(serde_json::json!({"latency_ms": 400}))
        .await;
    let client_ids = if world == "honour" { "honour" } else { "auto" };
    let mut first = gateway(&emulator, &store, client_ids);
    let mut client = RunStateServiceClient::connect(first.endpoint())
        .await
        .unwrap();
    let op = client
        .submit_run_states(SubmitRunStatesRequest {
            writes: (1..=WRITES).map(write).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    // Kill it once some writes are delivered and more are on their way.
    let mut o = ops(&first).await;
    for _ in 0..600 {
        let now = o
            .get_operation(GetOperationRequest {
                name: op.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if metadata(&now).delivered_count > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = gateway_with(
        &emulator,
        &store,
        client_ids,
        &["--admin-listen", "127.0.0.1:0"],
    );
    let mut o = ops(&second).await;
    let mut done = None;
    for _ in 0..60 {
        let now = o
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
    let done = done.expect("the operation finishes after the restart");
    let Some(operation::Result::Response(any)) = &done.result else {
        panic!("no response: {done:?}");
    };
    let results = SubmitRunStatesResponse::decode(any.value.as_slice())
        .unwrap()
        .results;
    assert_eq!(results.len(), WRITES as usize);
    let mut delivered = Vec::new();
    let mut unknown = Vec::new();
    for (n, r) in (1..=WRITES).zip(&results) {
        match &r.result {
            Some(run_state_write_result::Result::Name(_)) => delivered.push(i64::from(n)),
            Some(run_state_write_result::Result::Status(s)) => {
                let status = tonic::Status::with_details(
                    tonic::Code::from(s.code),
                    s.message.clone(),
                    s.encode_to_vec().into(),
                );
                let reason = status
                    .get_details_error_info()
                    .map(|i| i.reason)
                    .unwrap_or_default();
                assert_eq!(
                    (status.code(), reason.as_str()),
                    (tonic::Code::Unknown, "OUTCOME_UNKNOWN"),
                    "write {n}: {s:?}"
                );
                unknown.push(i64::from(n));
            }
            None => panic!("write {n} has no result"),
        }
    }
    // The metrics saw the rest delivered and nothing left pending.
    let metrics = reqwest::get(format!("http://{}/metrics", second.admin.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(value("runstate_outbox_delivered_total") >= 1.0);
    if !unknown.is_empty() {
        assert_eq!(value("runstate_outbox_failed_total"), unknown.len() as f64);
    }
    let graph = stored(&emulator).await;
    eprintln!(
        "delivered {} unknown {} stored {}",
        delivered.len(),
        unknown.len(),
        graph.len()
    );
    let sent = creates_sent(
        emulator_json(&emulator, "/_emulator/requests")
            .await
            .as_array()
            .unwrap(),
    );
    // Nothing doubled: no state twice in Graph.
    assert!(graph.values().all(|&n| n == 1), "doubled: {graph:?}");
    // Nothing lost: every delivered write is in Graph.
    for n in &delivered {
        assert_eq!(graph.get(n), Some(&1), "write {n} was reported delivered");
    }
    if world == "honour" {
        assert!(unknown.is_empty(), "honour world: {unknown:?}");
        assert_eq!(graph.len(), WRITES as usize);
    } else {
        // An unknown outcome was in flight at the kill: sent once, never again.
        for n in &unknown {
            assert_eq!(sent.get(n), Some(&1), "write {n} was sent again");
        }
        assert!(sent.values().all(|&n| n == 1), "sent twice: {sent:?}");
    }
}

#[tokio::test]
async fn redb_sigkill_mid_drain_in_the_honour_world() {
    killed_mid_drain(Store::redb(), "honour").await;
}

#[tokio::test]
async fn redb_sigkill_mid_drain_in_the_ignore_world() {
    killed_mid_drain(Store::redb(), "ignore").await;
}

#[tokio::test]
async fn postgres_sigkill_mid_drain_in_the_honour_world() {
    if let Some(store) = Store::postgres() {
        killed_mid_drain(store, "honour").await;
    }
}

#[tokio::test]
async fn postgres_sigkill_mid_drain_in_the_ignore_world() {
    if let Some(store) = Store::postgres() {
        killed_mid_drain(store, "ignore").await;
    }
}

#[tokio::test]
async fn a_corrupt_outbox_file_stops_startup_naming_it() {
    let store = Store::redb();
    let path = store.flag();
    std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let program = env!("CARGO_BIN_EXE_runstate-gateway");
    let out = std::process::Command::new(program)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--graph-token",
            "t",
            "--outbox",
            &path,
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path), "{stderr}");
    // A PostgreSQL server that does not answer stops startup too, naming
    // its host and never the URL's password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pg = std::process::Command::new(program)
        .args(["--listen", "127.0.0.1:0", "--graph-token", "t"])
        .env(
            "RUNSTATE_OUTBOX",
            format!("postgres://gw:hunter2@127.0.0.1:{port}/db"),
        )
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(pg.status.code(), Some(2), "{pg:?}");
    let stderr = String::from_utf8_lossy(&pg.stderr);
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
