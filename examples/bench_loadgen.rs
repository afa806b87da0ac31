//! Closed-loop load generator of the benchmark harness (`bench/run.py`).
//!
//! `--concurrency N` workers each send one call, wait for its answer and send
//! the next, for `--warmup` then `--duration` seconds; only answers completed in
//! the measured window count. Every answer is checked: in gRPC mode the call
//! must end with status OK and return a state with an id; in HTTP mode the
//! answer must be `201 Created`. Prints one JSON object on stdout.
//!
//! - `--mode grpc --target http://127.0.0.1:PORT`: `CreateScriptUserState` on
//!   `deviceManagementScripts/s1`, over `ceil(N / --streams-per-conn)` HTTP/2
//!   connections (default 64 streams each), workers spread round-robin. The
//!   same for the gateway, Envoy and the echo server.
//! - `--mode http --target http://127.0.0.1:EPORT`: send the equivalent Graph
//!   request straight to the emulator over HTTP/1.1, one pooled connection per
//!   worker. `--mode h2c`: the same over HTTP/2 with prior knowledge (one
//!   connection); `--mode https --target https://localhost:EPORT --ca-file
//!   CA.pem`: over TLS, ALPN `h2`, trusting only that CA.
//!
//! `--rpc` picks the call (default `user`):
//! - `user`: `CreateScriptUserState` on `deviceManagementScripts/s1`;
//! - `device`: `CreateScriptDeviceState` on `deviceManagementScripts/s1` (an
//!   enum and a timestamp);
//! - `nested`: `CreateScriptDeviceState` under the user state `--entity ID`;
//! - `compliance`: `CreateComplianceScriptDeviceState` on
//!   `deviceComplianceScripts/s1` (an enum and a timestamp);
//! - `update`: `UpdateScriptUserState` of the user state `--entity ID` with the
//!   mask `success_device_count` (HTTP: a PATCH);
//! - `batch`: `BatchCreateScriptDeviceStates` of `--batch-items` device states
//!   (gRPC only; every item must come back with an id).
//!
//! `--request-ids` gives every create (every batch item) a fresh `request_id`.
//! The JSON reports `count` (good answers in the measured window), `attempts`
//! (answers of any kind in it, for cost-only rows) and `items` per call.
//!
//! The runtime is single-threaded unless `--threads` says otherwise.

use std::time::{Duration, Instant};

use runstate_gateway::pb::{self, run_state_service_client::RunStateServiceClient};
use tonic::transport::{Channel, Endpoint};

const USER_BODY: &str = r##"{"@odata.type":"#microsoft.graph.deviceManagementScriptUserState","successDeviceCount":2,"errorDeviceCount":0,"userPrincipalName":"user@contoso.com"}"##;
const DEVICE_BODY: &str = r##"{"@odata.type":"#microsoft.graph.deviceManagementScriptDeviceState","runState":"success","resultMessage":"ok","lastStateUpdateDateTime":"2026-01-02T03:04:05Z","errorCode":0}"##;
const COMPLIANCE_BODY: &str = r##"{"@odata.type":"#microsoft.graph.deviceComplianceScriptDeviceState","detectionState":"success","lastStateUpdateDateTime":"2026-01-02T03:04:05Z","scriptOutput":"ok"}"##;
const UPDATE_BODY: &str = r##"{"@odata.type":"#microsoft.graph.deviceManagementScriptUserState","successDeviceCount":3}"##;
/// 2026-01-02T03:04:05Z
const WHEN: prost_types::Timestamp = prost_types::Timestamp {
    seconds: 1_767_323_045,
    nanos: 0,
};

/// The call every worker repeats.
#[derive(Clone, Copy, PartialEq)]
enum Rpc {
    User,
    Device,
    Nested,
    Compliance,
    Update,
    Batch,
}

impl Rpc {
    fn parse(s: &str) -> Option<Rpc> {
        Some(match s {
            "user" => Rpc::User,
            "device" => Rpc::Device,
            "nested" => Rpc::Nested,
            "compliance" => Rpc::Compliance,
            "update" => Rpc::Update,
            "batch" => Rpc::Batch,
            _ => return None,
        })
    }
}

#[derive(Clone)]
struct Opts {
    mode: String,
    target: String,
    concurrency: usize,
    streams_per_conn: usize,
    duration: Duration,
    warmup: Duration,
    threads: usize,
    token: String,
    rpc: Rpc,
    entity: String,
    request_ids: bool,
    batch_items: usize,
    ca_file: Option<String>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        mode: "grpc".into(),
        target: "http://127.0.0.1:50051".into(),
        concurrency: 1,
        streams_per_conn: 64,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        threads: 1,
        token: "Bearer bench-token".into(),
        rpc: Rpc::User,
        entity: String::new(),
        request_ids: false,
        batch_items: 20,
        ca_file: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let secs = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or(format!("{flag}: not a number of seconds (0..3600)"))
        };
        let count = |v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or(format!("{flag}: not a count (1..100000)"))
        };
        match flag.as_str() {
            "--mode" => o.mode = value()?,
            "--target" => o.target = value()?,
            "--concurrency" => o.concurrency = count(value()?)?,
            "--streams-per-conn" => o.streams_per_conn = count(value()?)?,
            "--duration" => o.duration = secs(value()?)?,
            "--warmup" => o.warmup = secs(value()?)?,
            "--threads" => o.threads = count(value()?)?,
            "--token" => o.token = value()?,
            "--rpc" => {
                o.rpc = Rpc::parse(&value()?).ok_or(
                    "--rpc is user, device, nested, compliance, update or batch".to_owned(),
                )?
            }
            "--entity" => o.entity = value()?,
            "--request-ids" => o.request_ids = true,
            "--batch-items" => o.batch_items = count(value()?)?.min(1000),
            "--ca-file" => o.ca_file = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !matches!(o.mode.as_str(), "grpc" | "http" | "h2c" | "https") {
        return Err("--mode is grpc, http, h2c or https".into());
    }
    if matches!(o.rpc, Rpc::Nested | Rpc::Update) && o.entity.is_empty() {
        return Err("--rpc nested and update need --entity ID".into());
    }
    if o.rpc == Rpc::Batch && o.mode != "grpc" {
        return Err("--rpc batch is gRPC only".into());
    }
    let host = o
        .target
        .strip_prefix("http://")
        .or_else(|| o.target.strip_prefix("https://"))
        .unwrap_or_default()
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    if !matches!(host, "127.0.0.1" | "localhost" | "[") {
        return Err("--target must be http://127.0.0.1:PORT (loopback only)".into());
    }
    Ok(o)
}

/// What every worker collects.
#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    attempts: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.attempts += other.attempts;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn note(&mut self, measured: bool, elapsed: Duration, result: Result<(), String>) {
        if !measured {
            return;
        }
        self.attempts += 1;
        match result {
            Ok(()) => self.latencies_ns.push(elapsed.as_nanos() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// The measured window, shared by all workers.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.start && at <= self.end
    }
}

fn user_state() -> pb::ScriptUserState {
    pb::ScriptUserState {
        user_principal_name: Some("user@contoso.com".into()),
        success_device_count: 2,
        error_device_count: 0,
        ..Default::default()
    }
}

fn device_create(parent: &str) -> pb::CreateScriptDeviceStateRequest {
    pb::CreateScriptDeviceStateRequest {
        parent: parent.into(),
        script_device_state: Some(pb::ScriptDeviceState {
            run_state: pb::RunState::Success as i32,
            result_message: Some("ok".into()),
            last_state_update_date_time: Some(WHEN),
            error_code: 0,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn request_id(on: bool) -> String {
    if on {
        uuid::Uuid::new_v4().to_string()
    } else {
        String::new()
    }
}

fn has_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        Err("OK without an id".to_owned())
    } else {
        Ok(())
    }
}

fn with_auth<T>(
    message: T,
    auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// One call of `o.rpc`; Ok when the answer is good.
async fn grpc_call(
    client: &mut RunStateServiceClient<Channel>,
    o: &Opts,
    auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> Result<(), tonic::Status> {
    let user_parent = format!("deviceManagementScripts/s1/userRunStates/{}", o.entity);
    let outcome = match o.rpc {
        Rpc::User => {
            let m = pb::CreateScriptUserStateRequest {
                parent: "deviceManagementScripts/s1".into(),
                script_user_state: Some(user_state()),
                request_id: request_id(o.request_ids),
                ..Default::default()
            };
            has_id(
                &client
                    .create_script_user_state(with_auth(m, auth))
                    .await?
                    .get_ref()
                    .id,
            )
        }
        Rpc::Device | Rpc::Nested => {
            let parent = if o.rpc == Rpc::Device {
                "deviceManagementScripts/s1"
            } else {
                &user_parent
            };
            let mut m = device_create(parent);
            m.request_id = request_id(o.request_ids);
            has_id(
                &client
                    .create_script_device_state(with_auth(m, auth))
                    .await?
                    .get_ref()
                    .id,
            )
        }
        Rpc::Compliance => {
            let m = pb::CreateComplianceScriptDeviceStateRequest {
                parent: "deviceComplianceScripts/s1".into(),
                compliance_script_device_state: Some(pb::ComplianceScriptDeviceState {
                    detection_state: pb::RunState::Success as i32,
                    last_state_update_date_time: Some(WHEN),
                    script_output: Some("ok".into()),
                    ..Default::default()
                }),
                request_id: request_id(o.request_ids),
                ..Default::default()
            };
            has_id(
                &client
                    .create_compliance_script_device_state(with_auth(m, auth))
                    .await?
                    .get_ref()
                    .id,
            )
        }
        Rpc::Update => {
            let m = pb::UpdateScriptUserStateRequest {
                script_user_state: Some(pb::ScriptUserState {
                    name: user_parent.clone(),
                    success_device_count: 3,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["success_device_count".into()],
                }),
            };
            let got = client.update_script_user_state(with_auth(m, auth)).await?;
            match got.get_ref().success_device_count {
                3 => has_id(&got.get_ref().id),
                n => Err(format!("updated count is {n}, not 3")),
            }
        }
        Rpc::Batch => {
            let requests = (0..o.batch_items)
                .map(|_| {
                    let mut m = device_create("");
                    m.request_id = request_id(o.request_ids);
                    m
                })
                .collect();
            let m = pb::BatchCreateScriptDeviceStatesRequest {
                parent: "deviceManagementScripts/s1".into(),
                requests,
            };
            let got = client
                .batch_create_script_device_states(with_auth(m, auth))
                .await?;
            let results = &got.get_ref().results;
            let good = results
                .iter()
                .filter(|r| match &r.result {
                    Some(pb::script_device_state_result::Result::ScriptDeviceState(s)) => {
                        !s.id.is_empty()
                    }
                    _ => false,
                })
                .count();
            if good == o.batch_items {
                Ok(())
            } else {
                Err(format!("{good} of {} items created", o.batch_items))
            }
        }
    };
    outcome.map_err(tonic::Status::internal)
}

async fn grpc_worker(mut client: RunStateServiceClient<Channel>, o: Opts, w: Window) -> Tally {
    let auth: tonic::metadata::MetadataValue<_> = o.token.parse().expect("a valid token");
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            return tally;
        }
        let result = grpc_call(&mut client, &o, &auth).await;
        let done = Instant::now();
        let result = result.map_err(|s| format!("{:?}: {}", s.code(), s.message()));
        tally.note(w.contains(done), done - sent, result);
    }
}

/// The Graph request of `o.rpc`: method, path under the target, body, and
/// the status of a good answer.
fn graph_request(o: &Opts) -> (reqwest::Method, String, &'static str, u16) {
    let scripts = "/beta/deviceManagement/deviceManagementScripts/s1";
    match o.rpc {
        Rpc::User => (
            reqwest::Method::POST,
            format!("{scripts}/userRunStates"),
            USER_BODY,
            201,
        ),
        Rpc::Device => (
            reqwest::Method::POST,
            format!("{scripts}/deviceRunStates"),
            DEVICE_BODY,
            201,
        ),
        Rpc::Nested => (
            reqwest::Method::POST,
            format!("{scripts}/userRunStates/{}/deviceRunStates", o.entity),
            DEVICE_BODY,
            201,
        ),
        Rpc::Compliance => (
            reqwest::Method::POST,
            "/beta/deviceManagement/deviceComplianceScripts/s1/deviceRunStates".to_owned(),
            COMPLIANCE_BODY,
            201,
        ),
        Rpc::Update => (
            reqwest::Method::PATCH,
            format!("{scripts}/userRunStates/{}", o.entity),
            UPDATE_BODY,
            200,
        ),
        Rpc::Batch => unreachable!("parse refuses --rpc batch over HTTP"),
    }
}

async fn http_worker(client: reqwest::Client, o: Opts, w: Window) -> Tally {
    let (method, path, body, want) = graph_request(&o);
    let url = format!("{}{path}", o.target.trim_end_matches('/'));
    let token = o.token.clone();
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            return tally;
        }
        let result = client
            .request(method.clone(), &url)
            .header("authorization", &token)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await;
        let result = match result {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(_) if status.as_u16() == want || (want == 200 && status == 204) => Ok(()),
                    Ok(_) => Err(format!("HTTP {status}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let done = Instant::now();
        tally.note(w.contains(done), done - sent, result);
    }
}

async fn run(o: Opts) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let connections = o.concurrency.div_ceil(o.streams_per_conn);
    let mut tasks = Vec::with_capacity(o.concurrency);
    // Connect before the clock starts.
    let now = Instant::now() + Duration::from_millis(50);
    let mut window = Window {
        start: now + o.warmup,
        end: now + o.warmup + o.duration,
    };
    let items = if o.rpc == Rpc::Batch {
        o.batch_items
    } else {
        1
    };
    if o.mode == "grpc" {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            // Each `connect` opens its own HTTP/2 connection.
            let channel = Endpoint::from_shared(o.target.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?;
            clients.push(RunStateServiceClient::new(channel));
        }
        let now = Instant::now();
        window = Window {
            start: now + o.warmup,
            end: now + o.warmup + o.duration,
        };
        for i in 0..o.concurrency {
            let client = clients[i % connections].clone();
            tasks.push(tokio::spawn(grpc_worker(client, o.clone(), window)));
        }
    } else {
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(o.concurrency);
        builder = match o.mode.as_str() {
            "http" => builder.http1_only(),
            "h2c" => builder.http2_prior_knowledge(),
            _ => {
                let path = o.ca_file.as_deref().ok_or("--mode https needs --ca-file")?;
                let ca = reqwest::Certificate::from_pem(&std::fs::read(path)?)?;
                builder.tls_certs_only([ca]).http2_prior_knowledge()
            }
        };
        let client = builder.build()?;
        for _ in 0..o.concurrency {
            tasks.push(tokio::spawn(http_worker(client.clone(), o.clone(), window)));
        }
    }
    let mut tally = Tally::default();
    for t in tasks {
        tally.merge(t.await?);
    }
    let mut l = tally.latencies_ns;
    l.sort_unstable();
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return 0.0;
        }
        let at = ((p / 100.0) * l.len() as f64).ceil() as usize;
        l[at.clamp(1, l.len()) - 1] as f64 / 1000.0
    };
    let count = l.len() as u64;
    let seconds = o.duration.as_secs_f64();
    let mean = if l.is_empty() {
        0.0
    } else {
        l.iter().sum::<u64>() as f64 / l.len() as f64 / 1000.0
    };
    Ok(serde_json::json!({
        "mode": o.mode,
        "target": o.target,
        "concurrency": o.concurrency,
        "connections": match o.mode.as_str() { "grpc" => connections, "http" => o.concurrency, _ => 1 },
        "items": items,
        "attempts": tally.attempts,
        "duration_s": seconds,
        "count": count,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "rps": count as f64 / seconds,
        "mean_us": mean,
        "p50_us": pct(50.0),
        "p90_us": pct(90.0),
        "p99_us": pct(99.0),
        "p999_us": pct(99.9),
        "max_us": pct(100.0),
    }))
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_loadgen: {e}");
            std::process::exit(2);
        }
    };
    let runtime = if o.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.threads)
            .enable_all()
            .build()
    };
    let report = runtime
        .expect("a tokio runtime")
        .block_on(run(o))
        .unwrap_or_else(|e| {
            eprintln!("bench_loadgen: {e}");
            std::process::exit(1);
        });
    println!("{report}");
}
