//! Load program of the bulk-write benchmark (`bench/bulk.py`).
//!
//! Creates `--n` device run states under `deviceManagementScripts/s1` in one
//! of three ways and prints one JSON object on stdout:
//!
//! - `--mode single`: one `CreateScriptDeviceState` per item, `--concurrency`
//!   calls in flight over one HTTP/2 connection.
//! - `--mode batch`: `BatchCreateScriptDeviceStates` with `--batch-size` items
//!   per call, the calls one after the other.
//! - `--mode stream`: one `StreamCreateScriptDeviceStates` call; the items are
//!   made lazily as the gateway takes them (so the sender is as fast as the
//!   gateway's backpressure allows) and every answer's `index` is checked:
//!   each item must be answered exactly once.
//!
//! Every item must succeed (a state with an id); failures are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use runstate_gateway::pb::{self, run_state_service_client::RunStateServiceClient};
use tonic::transport::{Channel, Endpoint};

const PARENT: &str = "deviceManagementScripts/s1";

struct Opts {
    mode: String,
    target: String,
    n: usize,
    concurrency: usize,
    batch_size: usize,
    token: String,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        mode: "single".into(),
        target: "http://127.0.0.1:50051".into(),
        n: 2000,
        concurrency: 64,
        batch_size: 1000,
        token: "Bearer bench-token".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let count = |v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or(format!("{flag}: not a count (1..1000000)"))
        };
        match flag.as_str() {
            "--mode" => o.mode = value()?,
            "--target" => o.target = value()?,
            "--n" => o.n = count(value()?)?,
            "--concurrency" => o.concurrency = count(value()?)?,
            "--batch-size" => o.batch_size = count(value()?)?,
            "--token" => o.token = value()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !matches!(o.mode.as_str(), "single" | "batch" | "stream") {
        return Err("--mode is single, batch or stream".into());
    }
    if !o.target.starts_with("http://127.0.0.1:") {
        return Err("--target must be http://127.0.0.1:PORT (loopback only)".into());
    }
    Ok(o)
}

fn state(i: usize) -> pb::ScriptDeviceState {
    pb::ScriptDeviceState {
        run_state: pb::RunState::Success as i32,
        result_message: Some(format!("bulk item {i}")),
        ..Default::default()
    }
}

fn create(i: usize) -> pb::CreateScriptDeviceStateRequest {
    pb::CreateScriptDeviceStateRequest {
        parent: PARENT.into(),
        script_device_state: Some(state(i)),
        ..Default::default()
    }
}

fn authed<T>(
    message: T,
    auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// Items that succeeded and failed, with the first failure.
#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        self.first_error.get_or_insert(e);
    }

    fn state(&mut self, s: Option<&pb::ScriptDeviceState>) {
        match s {
            Some(s) if !s.id.is_empty() => self.ok += 1,
            _ => self.fail("a result without a state id".into()),
        }
    }
}

async fn single(
    o: &Opts,
    client: RunStateServiceClient<Channel>,
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..o.concurrency {
        let (mut client, next, auth, n) = (client.clone(), next.clone(), auth.clone(), o.n);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return tally;
                }
                match client
                    .create_script_device_state(authed(create(i), &auth))
                    .await
                {
                    Ok(r) => tally.state(Some(r.get_ref())),
                    Err(s) => tally.fail(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        }));
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.expect("worker panicked");
        all.ok += t.ok;
        all.failed += t.failed;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    all
}

async fn batch(
    o: &Opts,
    mut client: RunStateServiceClient<Channel>,
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> (Tally, usize) {
    let mut tally = Tally::default();
    let mut calls = 0;
    let mut start = 0;
    while start < o.n {
        let end = (start + o.batch_size).min(o.n);
        let message = pb::BatchCreateScriptDeviceStatesRequest {
            parent: PARENT.into(),
            requests: (start..end).map(create).collect(),
        };
        calls += 1;
        match client
            .batch_create_script_device_states(authed(message, &auth))
            .await
        {
            Ok(r) => {
                let results = &r.get_ref().results;
                if results.len() != end - start {
                    tally.fail(format!(
                        "{} results for {} requests",
                        results.len(),
                        end - start
                    ));
                }
                for result in results {
                    match &result.result {
                        Some(pb::script_device_state_result::Result::ScriptDeviceState(s)) => {
                            tally.state(Some(s))
                        }
                        Some(pb::script_device_state_result::Result::Status(s)) => {
                            tally.fail(format!("item status {}: {}", s.code, s.message))
                        }
                        None => tally.fail("an empty result".into()),
                    }
                }
            }
            Err(s) => {
                for _ in start..end {
                    tally.fail(format!("{:?}: {}", s.code(), s.message()));
                }
            }
        }
        start = end;
    }
    (tally, calls)
}

/// The stream's tally plus answers seen twice and items never answered.
async fn stream(
    o: &Opts,
    mut client: RunStateServiceClient<Channel>,
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> (Tally, usize, usize) {
    let items =
        futures_util::stream::iter((0..o.n).map(|i| pb::StreamCreateScriptDeviceStatesRequest {
            parent: PARENT.into(),
            script_device_state: Some(state(i)),
            ..Default::default()
        }));
    let mut tally = Tally::default();
    let mut seen = vec![0u32; o.n];
    match client
        .stream_create_script_device_states(authed(items, &auth))
        .await
    {
        Ok(r) => {
            let mut answers = r.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(a)) => {
                        match usize::try_from(a.index).ok().and_then(|i| seen.get_mut(i)) {
                            Some(count) => *count += 1,
                            None => tally.fail(format!("answer for unknown index {}", a.index)),
                        }
                        match &a.result {
                            Some(pb::stream_create_script_device_states_response::Result::ScriptDeviceState(s)) => tally.state(Some(s)),
                            Some(pb::stream_create_script_device_states_response::Result::Status(s)) => {
                                tally.fail(format!("item {} status {}: {}", a.index, s.code, s.message))
                            }
                            None => tally.fail(format!("item {}: empty answer", a.index)),
                        }
                    }
                    Ok(None) => break,
                    Err(s) => {
                        tally.fail(format!("stream ended: {:?}: {}", s.code(), s.message()));
                        break;
                    }
                }
            }
        }
        Err(s) => tally.fail(format!("{:?}: {}", s.code(), s.message())),
    }
    let twice = seen.iter().filter(|c| **c > 1).count();
    let never = seen.iter().filter(|c| **c == 0).count();
    (tally, twice, never)
}

async fn run(o: Opts) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let channel = Endpoint::from_shared(o.target.clone())?.connect().await?;
    let client = RunStateServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let auth: tonic::metadata::MetadataValue<_> = o.token.parse()?;
    let started = Instant::now();
    let mut report = serde_json::json!({"mode": o.mode, "n": o.n});
    let tally = match o.mode.as_str() {
        "single" => {
            report["concurrency"] = o.concurrency.into();
            single(&o, client, auth).await
        }
        "batch" => {
            let (t, calls) = batch(&o, client, auth).await;
            report["batch_size"] = o.batch_size.into();
            report["calls"] = calls.into();
            t
        }
        _ => {
            let (t, twice, never) = stream(&o, client, auth).await;
            report["answered_twice"] = twice.into();
            report["never_answered"] = never.into();
            t
        }
    };
    let wall = started.elapsed().as_secs_f64();
    report["wall_s"] = wall.into();
    report["ok"] = tally.ok.into();
    report["failed"] = tally.failed.into();
    report["items_per_s"] = (tally.ok as f64 / wall).into();
    report["first_error"] = tally.first_error.into();
    Ok(report)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_bulk: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(o)) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("bench_bulk: {e}");
            std::process::exit(1);
        }
    }
}
