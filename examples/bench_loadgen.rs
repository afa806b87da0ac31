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
//! - `--mode http --target http://127.0.0.1:EPORT`: POST the equivalent Graph
//!   JSON to the emulator, one pooled HTTP/1.1 connection per worker (what the
//!   gateway and Envoy do upstream).
//!
//! The runtime is single-threaded unless `--threads` says otherwise.

use std::time::{Duration, Instant};

use runstate_gateway::pb::{self, run_state_service_client::RunStateServiceClient};
use tonic::transport::{Channel, Endpoint};

const GRAPH_BODY: &str = r##"{"@odata.type":"#microsoft.graph.deviceManagementScriptUserState","successDeviceCount":2,"errorDeviceCount":0,"userPrincipalName":"user@contoso.com"}"##;
const PATH: &str = "/beta/deviceManagement/deviceManagementScripts/s1/userRunStates";

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
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !matches!(o.mode.as_str(), "grpc" | "http") {
        return Err("--mode is grpc or http".into());
    }
    let host = o
        .target
        .strip_prefix("http://")
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
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn note(&mut self, measured: bool, elapsed: Duration, result: Result<(), String>) {
        if !measured {
            return;
        }
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

async fn grpc_worker(
    mut client: RunStateServiceClient<Channel>,
    token: String,
    w: Window,
) -> Tally {
    let message = pb::CreateScriptUserStateRequest {
        parent: "deviceManagementScripts/s1".into(),
        script_user_state: Some(pb::ScriptUserState {
            user_principal_name: Some("user@contoso.com".into()),
            success_device_count: 2,
            error_device_count: 0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let auth: tonic::metadata::MetadataValue<_> = token.parse().expect("a valid token");
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            return tally;
        }
        let mut request = tonic::Request::new(message.clone());
        request.metadata_mut().insert("authorization", auth.clone());
        let result = client.create_script_user_state(request).await;
        let done = Instant::now();
        let result = match result {
            Ok(r) if !r.get_ref().id.is_empty() => Ok(()),
            Ok(_) => Err("OK without an id".to_owned()),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        };
        tally.note(w.contains(done), done - sent, result);
    }
}

async fn http_worker(client: reqwest::Client, url: String, token: String, w: Window) -> Tally {
    let mut tally = Tally::default();
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            return tally;
        }
        let result = client
            .post(&url)
            .header("authorization", &token)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(GRAPH_BODY)
            .send()
            .await;
        let result = match result {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(_) if status == reqwest::StatusCode::CREATED => Ok(()),
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
            tasks.push(tokio::spawn(grpc_worker(client, o.token.clone(), window)));
        }
    } else {
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(o.concurrency)
            .build()?;
        let url = format!("{}{PATH}", o.target.trim_end_matches('/'));
        for _ in 0..o.concurrency {
            tasks.push(tokio::spawn(http_worker(
                client.clone(),
                url.clone(),
                o.token.clone(),
                window,
            )));
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
        "connections": if o.mode == "grpc" { connections } else { o.concurrency },
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
