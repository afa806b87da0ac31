//! SubmitRunStates and google.longrunning.Operations over the outbox.
//!
//! Each scenario takes the store as a parameter ([`Store`]); the
//! `stores!` list at the end runs every scenario against each store.

use std::time::Duration;

use prost::Message;
use runstate_gateway::pb::{
    CreateScriptDeviceStateRequest, CreateScriptUserStateRequest, DeleteScriptDeviceStateRequest,
    GetScriptDeviceStateRequest, RunState, RunStateWrite, ScriptDeviceState, ScriptUserState,
    SubmitRunStatesMetadata, SubmitRunStatesRequest, SubmitRunStatesResponse,
    UpdateScriptDeviceStateRequest,
    longrunning::{
        CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
        Operation, WaitOperationRequest, operation, operations_client::OperationsClient,
    },
    run_state_write::Write,
    run_state_write_result,
};
use tonic::{Code, Request, transport::Channel};

use crate::helpers::{Dir, TestApp, assert_violation, mask, spawn_app_with, with_token};
use crate::pg_server::PgServer;

/// Where a test's outbox lives.
pub enum Store {
    /// The embedded redb file, in a scratch directory.
    Redb(Dir),
    /// A private PostgreSQL server.
    Postgres(PgServer),
}

impl Store {
    pub fn redb() -> Self {
        Store::Redb(Dir::new())
    }

    /// A PostgreSQL server of its own, or `None` (after saying why) where
    /// PostgreSQL is not installed and `REQUIRE_POSTGRES` is not `1`.
    pub fn postgres() -> Option<Self> {
        PgServer::start().map(Store::Postgres)
    }

    /// The `--outbox` value.
    pub fn flag(&self) -> String {
        match self {
            Store::Redb(dir) => dir.0.join("outbox.redb").display().to_string(),
            Store::Postgres(server) => server.url(),
        }
    }
}

/// A JWT-shaped token (unsigned: the emulator and the gateway only read
/// its claims) for caller `oid` of tenant `tid`.
pub fn token(tid: &str, oid: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.sig",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"tid":"{tid}","oid":"{oid}"}}"#))
    )
}

pub struct Outboxed {
    pub app: TestApp,
    pub ops: OperationsClient<Channel>,
    pub token: String,
}

/// A gateway with an outbox in `store` and extra flags.
pub async fn spawn(store: &Store, flags: &[&str]) -> Outboxed {
    let outbox = store.flag();
    let mut args = vec!["--outbox", outbox.as_str()];
    if !flags.contains(&"--write-budget") {
        args.extend(["--write-budget", "off"]);
    }
    args.extend_from_slice(flags);
    let app = spawn_app_with(&args).await;
    let ops = OperationsClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();
    Outboxed {
        app,
        ops,
        token: token("tenant-a", "alice"),
    }
}

pub fn rid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

pub fn create_device(n: u32, parent: &str) -> RunStateWrite {
    RunStateWrite {
        request_id: rid(n),
        write: Some(Write::CreateScriptDeviceState(
            CreateScriptDeviceStateRequest {
                parent: parent.into(),
                script_device_state: Some(ScriptDeviceState {
                    run_state: RunState::Success as i32,
                    error_code: n as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

fn update_device(n: u32, name: &str, state: ScriptDeviceState, paths: &[&str]) -> RunStateWrite {
    RunStateWrite {
        request_id: rid(n),
        write: Some(Write::UpdateScriptDeviceState(
            UpdateScriptDeviceStateRequest {
                script_device_state: Some(ScriptDeviceState {
                    name: name.into(),
                    ..state
                }),
                update_mask: mask(paths),
            },
        )),
    }
}

impl Outboxed {
    pub async fn submit(&mut self, writes: Vec<RunStateWrite>) -> Result<Operation, tonic::Status> {
        self.submit_as(writes, &self.token.clone()).await
    }

    pub async fn submit_as(
        &mut self,
        writes: Vec<RunStateWrite>,
        token: &str,
    ) -> Result<Operation, tonic::Status> {
        self.app
            .client
            .submit_run_states(with_token(SubmitRunStatesRequest { writes }, token))
            .await
            .map(|r| r.into_inner())
    }

    /// Waits until the operation is done (each WaitOperation up to 10 s).
    pub async fn wait(&mut self, name: &str) -> Operation {
        for _ in 0..60 {
            let op = self
                .ops
                .wait_operation(with_token(
                    WaitOperationRequest {
                        name: name.into(),
                        timeout: Some(prost_types::Duration {
                            seconds: 10,
                            nanos: 0,
                        }),
                    },
                    &self.token,
                ))
                .await
                .unwrap()
                .into_inner();
            if op.done {
                return op;
            }
        }
        panic!("{name} never finished");
    }

    /// The device state `name`, read with this caller's token.
    pub async fn state(&mut self, name: &str) -> ScriptDeviceState {
        self.app
            .client
            .get_script_device_state(with_token(
                GetScriptDeviceStateRequest { name: name.into() },
                &self.token,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn get(&mut self, name: &str, token: &str) -> Result<Operation, tonic::Status> {
        self.ops
            .get_operation(with_token(GetOperationRequest { name: name.into() }, token))
            .await
            .map(|r| r.into_inner())
    }

    /// The caller's operations whose `done` is `done` (one page).
    pub async fn list_done(&mut self, done: bool) -> Vec<Operation> {
        let token = self.token.clone();
        self.ops
            .list_operations(with_token(
                ListOperationsRequest {
                    filter: format!("done = {done}"),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .operations
    }
}

pub fn metadata(op: &Operation) -> SubmitRunStatesMetadata {
    let any = op.metadata.as_ref().expect("metadata");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/intune.runstates.v1.SubmitRunStatesMetadata"
    );
    SubmitRunStatesMetadata::decode(any.value.as_slice()).unwrap()
}

pub fn response(op: &Operation) -> SubmitRunStatesResponse {
    match &op.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(
                any.type_url,
                "type.googleapis.com/intune.runstates.v1.SubmitRunStatesResponse"
            );
            SubmitRunStatesResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("no response: {other:?}"),
    }
}

/// Each result's name, or its status code.
pub fn outcomes(op: &Operation) -> Vec<Result<String, Code>> {
    response(op)
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(run_state_write_result::Result::Name(name)) => Ok(name),
            Some(run_state_write_result::Result::Status(s)) => Err(Code::from(s.code)),
            None => panic!("a result of a done operation is empty"),
        })
        .collect()
}

const SCRIPT: &str = "deviceManagementScripts/s1";

async fn submit_wait_get_and_list(store: Store) {
    let mut o = spawn(&store, &[]).await;
    let writes = (1..=3).map(|n| create_device(n, SCRIPT)).collect();
    let op = o.submit(writes).await.unwrap();
    assert!(op.name.starts_with("operations/"), "{}", op.name);
    let m = metadata(&op);
    assert_eq!(m.total_count, 3);
    assert!(m.create_time.is_some());
    let done = o.wait(&op.name).await;
    let m = metadata(&done);
    assert_eq!(
        (m.delivered_count, m.failed_count, m.pending_count),
        (3, 0, 0)
    );
    assert!(m.estimated_completion_time.is_none());
    let results = response(&done).results;
    assert_eq!(
        results
            .iter()
            .map(|r| r.request_id.clone())
            .collect::<Vec<_>>(),
        vec![rid(1), rid(2), rid(3)]
    );
    // Each write is in Graph, once, under the name its result gives.
    for (n, outcome) in (1..=3).zip(outcomes(&done)) {
        let name = outcome.unwrap();
        assert_eq!(name, format!("{SCRIPT}/deviceRunStates/{}", rid(n)));
        let got = o.state(&name).await;
        assert_eq!(got.error_code, n as i32);
    }
    let posts = o
        .app
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("deviceRunStates"))
        .count()
        + batch_items(&o.app, "POST");
    assert_eq!(posts, 3);
    let again = o.get(&op.name, &o.token.clone()).await.unwrap();
    assert_eq!(again, done);
    assert_eq!(o.list_done(true).await, vec![done.clone()]);
    assert!(o.list_done(false).await.is_empty());
}

/// Items of `$batch` requests with this method.
fn batch_items(app: &TestApp, method: &str) -> usize {
    app.requests()
        .iter()
        .filter(|r| r.path.ends_with("$batch"))
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            body["requests"]
                .as_array()
                .map(|items| items.iter().filter(|i| i["method"] == method).count())
                .unwrap_or(0)
        })
        .sum()
}

async fn another_caller_sees_nothing(store: Store) {
    let mut o = spawn(&store, &[]).await;
    let op = o.submit(vec![create_device(1, SCRIPT)]).await.unwrap();
    let bob = token("tenant-a", "bob");
    for status in [
        o.get(&op.name, &bob).await.unwrap_err(),
        o.ops
            .cancel_operation(with_token(
                CancelOperationRequest {
                    name: op.name.clone(),
                },
                &bob,
            ))
            .await
            .unwrap_err(),
        o.ops
            .delete_operation(with_token(
                DeleteOperationRequest {
                    name: op.name.clone(),
                },
                &bob,
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    let listed = o
        .ops
        .list_operations(with_token(ListOperationsRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.operations.is_empty());
    // The owner still sees it, and can delete it once done.
    o.wait(&op.name).await;
    o.ops
        .delete_operation(with_token(
            DeleteOperationRequest {
                name: op.name.clone(),
            },
            &o.token,
        ))
        .await
        .unwrap();
    let gone = o.get(&op.name, &o.token.clone()).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

async fn one_bad_write_refuses_all(store: Store) {
    let mut o = spawn(&store, &[]).await;
    let mut bad = create_device(2, "nonsense/x");
    let no_id = RunStateWrite {
        request_id: String::new(),
        ..create_device(3, SCRIPT)
    };
    let mut own_id = create_device(4, SCRIPT);
    if let Some(Write::CreateScriptDeviceState(r)) = &mut own_id.write {
        r.request_id = rid(99);
    }
    if let Some(Write::CreateScriptDeviceState(r)) = &mut bad.write {
        r.script_device_state.as_mut().unwrap().run_state = 99;
    }
    let err = o
        .submit(vec![create_device(1, SCRIPT), bad, no_id, own_id])
        .await
        .unwrap_err();
    assert_violation(&err, "writes[1].create_script_device_state.parent");
    assert_violation(&err, "writes[2].request_id");
    assert_violation(&err, "writes[3].create_script_device_state.request_id");
    let dup = o
        .submit(vec![create_device(1, SCRIPT), create_device(1, SCRIPT)])
        .await
        .unwrap_err();
    assert_violation(&dup, "writes[1].request_id");
    let none = o.submit(vec![]).await.unwrap_err();
    assert_violation(&none, "writes");
    // Nothing was stored, nothing reached Graph.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(o.app.requests().is_empty(), "{:?}", o.app.methods());
    let listed = o
        .ops
        .list_operations(with_token(ListOperationsRequest::default(), &o.token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.operations.is_empty());
}

async fn a_full_outbox_refuses_the_whole_submission(store: Store) {
    let mut o = spawn(&store, &["--outbox-max-pending", "3,1MiB"]).await;
    // Graph is slow, so the first writes are still pending.
    o.app.graph.set_latency(Duration::from_secs(3));
    o.submit((1..=2).map(|n| create_device(n, SCRIPT)).collect())
        .await
        .unwrap();
    let err = o
        .submit((3..=4).map(|n| create_device(n, SCRIPT)).collect())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    use tonic_types::StatusExt;
    assert!(err.get_details_retry_info().is_some(), "{err:?}");
    assert_eq!(err.get_details_error_info().unwrap().reason, "OUTBOX_FULL");
    o.app.graph.set_latency(Duration::ZERO);
}

async fn a_repeated_request_id_gets_the_first_result(store: Store) {
    let mut o = spawn(&store, &[]).await;
    let first = o.submit(vec![create_device(1, SCRIPT)]).await.unwrap();
    let first = o.wait(&first.name).await;
    // The same write again, with a new one: only the new one is sent.
    let second = o
        .submit(vec![create_device(1, SCRIPT), create_device(2, SCRIPT)])
        .await
        .unwrap();
    let second = o.wait(&second.name).await;
    assert_eq!(outcomes(&second)[0], outcomes(&first)[0]);
    assert!(outcomes(&second)[1].is_ok());
    let sent = o
        .app
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("deviceRunStates"))
        .count()
        + batch_items(&o.app, "POST");
    assert_eq!(sent, 2);
    // The same request id with another write is refused, naming it.
    let mut other = create_device(1, SCRIPT);
    if let Some(Write::CreateScriptDeviceState(r)) = &mut other.write {
        r.script_device_state.as_mut().unwrap().error_code = 777;
    }
    let err = o
        .submit(vec![create_device(3, SCRIPT), other])
        .await
        .unwrap_err();
    assert_violation(&err, "writes[1].request_id");
}

async fn cancel_ends_unsent_writes_as_cancelled(store: Store) {
    let mut o = spawn(&store, &["--write-budget", "1/60s"]).await;
    let op = o
        .submit((1..=4).map(|n| create_device(n, SCRIPT)).collect())
        .await
        .unwrap();
    // The budget lets one write through a minute: cancel the others,
    // which wait in the outbox.
    tokio::time::sleep(Duration::from_millis(500)).await;
    o.ops
        .cancel_operation(with_token(
            CancelOperationRequest {
                name: op.name.clone(),
            },
            &o.token,
        ))
        .await
        .unwrap();
    let done = o.wait(&op.name).await;
    let m = metadata(&done);
    assert_eq!(m.total_count, 4);
    assert!(m.cancelled_count >= 2, "{m:?}");
    assert_eq!(m.delivered_count + m.failed_count + m.cancelled_count, 4);
    let cancelled = outcomes(&done)
        .into_iter()
        .filter(|o| *o == Err(Code::Cancelled))
        .count();
    assert_eq!(cancelled as i64, m.cancelled_count);
    // A cancelled write never reached Graph.
    let posts = o
        .app
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("deviceRunStates"))
        .count()
        + batch_items(&o.app, "POST");
    assert_eq!(posts as i64, m.delivered_count + m.failed_count);
}

async fn updates_of_one_state_coalesce(store: Store) {
    let mut o = spawn(&store, &[]).await;
    let created = o.submit(vec![create_device(1, SCRIPT)]).await.unwrap();
    let created = o.wait(&created.name).await;
    let name = outcomes(&created)[0].clone().unwrap();
    o.app.graph.clear_requests();
    let writes = vec![
        update_device(
            2,
            &name,
            ScriptDeviceState {
                error_code: 5,
                result_message: Some("first".into()),
                ..Default::default()
            },
            &["error_code", "result_message"],
        ),
        update_device(
            3,
            &name,
            ScriptDeviceState {
                result_message: Some("second".into()),
                ..Default::default()
            },
            &["result_message"],
        ),
        update_device(
            4,
            &name,
            ScriptDeviceState {
                run_state: RunState::Fail as i32,
                ..Default::default()
            },
            &["run_state"],
        ),
    ];
    let op = o.submit(writes).await.unwrap();
    let done = o.wait(&op.name).await;
    assert_eq!(outcomes(&done), vec![Ok(name.clone()); 3]);
    let patches = o
        .app
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count()
        + batch_items(&o.app, "PATCH");
    assert_eq!(patches, 1, "{:?}", o.app.methods());
    let got = o.state(&name).await;
    assert_eq!(got.error_code, 5);
    assert_eq!(got.result_message.as_deref(), Some("second"));
    assert_eq!(got.run_state, RunState::Fail as i32);
    // A delete after them goes out on its own.
    let delete = RunStateWrite {
        request_id: rid(5),
        write: Some(Write::DeleteScriptDeviceState(
            DeleteScriptDeviceStateRequest {
                name: name.clone(),
                allow_missing: false,
            },
        )),
    };
    let op = o.submit(vec![delete]).await.unwrap();
    let done = o.wait(&op.name).await;
    assert_eq!(outcomes(&done), vec![Ok(name)]);
}

async fn a_user_state_create_reaches_graph(store: Store) {
    let mut o = spawn(&store, &[]).await;
    let write = RunStateWrite {
        request_id: rid(1),
        write: Some(Write::CreateScriptUserState(CreateScriptUserStateRequest {
            parent: SCRIPT.into(),
            script_user_state: Some(ScriptUserState {
                user_principal_name: Some("a@contoso.com".into()),
                ..Default::default()
            }),
            request_id: rid(1),
            ..Default::default()
        })),
    };
    let op = o.submit(vec![write]).await.unwrap();
    let done = o.wait(&op.name).await;
    assert_eq!(
        outcomes(&done),
        vec![Ok(format!("{SCRIPT}/userRunStates/{}", rid(1)))]
    );
}

fn delete_device(n: u32, name: &str) -> RunStateWrite {
    RunStateWrite {
        request_id: rid(n),
        write: Some(Write::DeleteScriptDeviceState(
            DeleteScriptDeviceStateRequest {
                name: name.into(),
                allow_missing: false,
            },
        )),
    }
}

/// Each Graph request (alone or a `$batch` item) as (arrival, method,
/// entity id, errorCode sent), in arrival order.
fn entity_requests(app: &TestApp) -> Vec<(std::time::Instant, String, String, Option<i64>)> {
    let mut out = Vec::new();
    for r in app.requests() {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let items = if r.path.ends_with("$batch") {
            assert!(body["requests"].is_array(), "a $batch body was cut: {r:?}");
            body["requests"].as_array().cloned().unwrap_or_default()
        } else {
            vec![serde_json::json!({"method": r.method, "url": r.path, "body": body})]
        };
        for item in items {
            let method = item["method"].as_str().unwrap_or_default().to_owned();
            let url = item["url"].as_str().unwrap_or_default();
            let id = if method == "POST" {
                item["body"]["id"].as_str().unwrap_or_default().to_owned()
            } else {
                url.rsplit('/').next().unwrap_or_default().to_owned()
            };
            out.push((r.received, method, id, item["body"]["errorCode"].as_i64()));
        }
    }
    out.sort_by_key(|r| r.0);
    out
}

async fn one_entitys_writes_never_overlap_while_groups_do(store: Store) {
    // Groups of at most 20 requests, several in flight at once; every
    // answer takes LATENCY, so a request sent before the previous one to
    // its entity was answered arrives less than LATENCY after it.
    const LATENCY: Duration = Duration::from_millis(400);
    const N: u32 = 24;
    let mut o = spawn(&store, &["--batch-concurrency", "1"]).await;
    o.app.graph.set_latency(LATENCY);
    let name = |k: u32| format!("{SCRIPT}/deviceRunStates/{}", rid(k));
    let code = |n: u32| ScriptDeviceState {
        error_code: n as i32,
        ..Default::default()
    };
    let mut writes: Vec<RunStateWrite> = (1..=N).map(|k| create_device(k, SCRIPT)).collect();
    for round in [100, 200] {
        writes.extend(
            (1..=N).map(|k| update_device(round + k, &name(k), code(round + k), &["error_code"])),
        );
    }
    writes.extend((1..=N).map(|k| delete_device(300 + k, &name(k))));
    let op = o.submit(writes).await.unwrap();
    let done = o.wait(&op.name).await;
    let expected: Vec<Result<String, Code>> =
        (0..4).flat_map(|_| (1..=N).map(|k| Ok(name(k)))).collect();
    assert_eq!(outcomes(&done), expected);

    let requests = entity_requests(&o.app);
    let batches: Vec<std::time::Instant> = o
        .app
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("$batch"))
        .map(|r| r.received)
        .collect();
    let overlapping = batches
        .windows(2)
        .filter(|p| p[1].duration_since(p[0]) < LATENCY)
        .count();
    eprintln!(
        "{} $batch requests, {overlapping} sent while another was in flight",
        batches.len()
    );
    for k in 1..=N {
        let id = rid(k);
        let mine: Vec<_> = requests.iter().filter(|r| r.2 == id).collect();
        let methods: Vec<&str> = mine.iter().map(|r| r.1.as_str()).collect();
        // Created, updated (the two updates perhaps coalesced), deleted: in
        // the order submitted.
        assert!(
            methods == ["POST", "PATCH", "PATCH", "DELETE"]
                || methods == ["POST", "PATCH", "DELETE"],
            "entity {k}: {methods:?}"
        );
        let patched: Vec<i64> = mine
            .iter()
            .filter(|r| r.1 == "PATCH")
            .filter_map(|r| r.3)
            .collect();
        assert_eq!(patched.last(), Some(&i64::from(200 + k)), "entity {k}");
        assert!(
            patched.windows(2).all(|p| p[0] < p[1]),
            "entity {k}: {patched:?}"
        );
        // Each went only once the one before was answered.
        for pair in mine.windows(2) {
            let gap = pair[1].0.duration_since(pair[0].0);
            assert!(
                gap >= LATENCY,
                "entity {k}: {} sent {gap:?} after {}, before its answer",
                pair[1].1,
                pair[0].1
            );
        }
    }
    o.app.graph.set_latency(Duration::ZERO);
}

macro_rules! stores {
    ($($scenario:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Store::redb()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    if let Some(store) = super::Store::postgres() {
                        super::$scenario(store).await
                    }
                }
            )*
        }
    };
}

stores!(
    submit_wait_get_and_list,
    another_caller_sees_nothing,
    one_bad_write_refuses_all,
    a_full_outbox_refuses_the_whole_submission,
    a_repeated_request_id_gets_the_first_result,
    cancel_ends_unsent_writes_as_cancelled,
    updates_of_one_state_coalesce,
    a_user_state_create_reaches_graph,
    one_entitys_writes_never_overlap_while_groups_do,
);

#[tokio::test]
async fn without_an_outbox_submit_names_the_flag() {
    let mut app = spawn_app_with(&["--graph-token", "t"]).await;
    let err = app
        .client
        .submit_run_states(Request::new(SubmitRunStatesRequest {
            writes: vec![create_device(1, SCRIPT)],
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("--outbox"), "{}", err.message());
}
