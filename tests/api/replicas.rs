//! Many replicas: three gateway processes (the real binary) share one
//! redis-server on loopback. Graph ignores client ids here, so only the
//! shared store keeps a request id from writing twice.
//!
//! These tests need `redis-server` (`apt-get install redis-server`). Without
//! it they are skipped with a message, unless `REQUIRE_REDIS=1` (CI) makes
//! that a failure.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use runstate_emulator::{Emulator, RunningEmulator};
use runstate_gateway::pb::{
    ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest, RunState,
    run_state_service_client::RunStateServiceClient,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{Request, transport::Channel};

use crate::helpers::TOKEN;

/// A redis-server on a free loopback port, stopped on drop.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
    /// With persistence: the directory of its append-only file.
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// Starts one, or `None` (after saying why) when redis-server is not
    /// installed and `REQUIRE_REDIS` is not `1`.
    pub fn start() -> Option<Self> {
        Self::start_in(None)
    }

    /// Like [`start`](Self::start), with every write fsynced to an
    /// append-only file, so its data survive a SIGKILL and a restart.
    pub fn start_persistent() -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("runstate-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(Some(dir))
    }

    fn start_in(dir: Option<std::path::PathBuf>) -> Option<Self> {
        let installed = std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("REQUIRE_REDIS=1 but redis-server is not installed");
            }
            eprintln!(
                "SKIPPED: redis-server is not installed (apt-get install redis-server); set REQUIRE_REDIS=1 to make this a failure"
            );
            return None;
        }
        let port = free_port();
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub fn restart(&mut self) {
        let mut command = std::process::Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} redis-server");
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_connection().unwrap();
        redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process takes SIGKILL too; CONT is for good measure.
            self.signal("CONT");
        }
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process; killed on drop.
pub struct Gateway {
    _child: Child,
    pub client: RunStateServiceClient<Channel>,
}

/// Spawns the real binary (or `RUNSTATE_TEST_BINARY`, to compare another
/// build) and waits for its "listening" log line.
pub async fn gateway(graph_url: &str, extra: &[&str]) -> Gateway {
    let program = std::env::var("RUNSTATE_TEST_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_runstate-gateway").to_owned());
    let mut child = Command::new(program)
        .args(["--listen", "127.0.0.1:0", "--graph-url", graph_url])
        .args(["--graph-token", TOKEN, "--log-format", "json"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "runstate-gateway listening" {
                return v["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .expect("the gateway listens within 30 s");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = RunStateServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("client connects");
    Gateway {
        _child: child,
        client,
    }
}

pub async fn emulator() -> (Emulator, RunningEmulator) {
    let graph = Emulator::new();
    let running = graph.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
    (graph, running)
}

pub fn create(request_id: &str, output: &str) -> Request<CreateComplianceScriptDeviceStateRequest> {
    let mut r = Request::new(CreateComplianceScriptDeviceStateRequest {
        parent: "deviceComplianceScripts/c".into(),
        compliance_script_device_state: Some(ComplianceScriptDeviceState {
            detection_state: RunState::Success as i32,
            script_output: Some(output.into()),
            ..Default::default()
        }),
        request_id: request_id.into(),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(30));
    r
}

pub fn posts(graph: &Emulator) -> usize {
    graph
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count()
}

#[tokio::test]
async fn three_replicas_create_each_request_id_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (graph, running) = emulator().await;
    // Slow answers make the three copies of each call overlap.
    graph.set_latency(Duration::from_millis(150));
    let url = running.base_url();
    // The default `auto` mode: it sends ids, and learns they are ignored.
    let flags = ["--state-store", &redis.url(), "--replicas", "3"];
    let gateways = [
        gateway(&url, &flags).await,
        gateway(&url, &flags).await,
        gateway(&url, &flags).await,
    ];
    let ids: Vec<String> = (0..20).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut calls = Vec::new();
    for id in &ids {
        for g in &gateways {
            let mut client = g.client.clone();
            let request = create(id, id);
            calls.push(tokio::spawn(async move {
                client
                    .create_compliance_script_device_state(request)
                    .await
                    .map(|r| r.into_inner())
            }));
        }
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().expect("every call succeeds"));
    }
    for (n, chunk) in answers.chunks(3).enumerate() {
        assert_eq!(chunk[0], chunk[1], "request id {n}");
        assert_eq!(chunk[1], chunk[2], "request id {n}");
    }
    assert_eq!(posts(&graph), ids.len(), "one POST per request id");
    let names: std::collections::HashSet<_> = answers.iter().map(|a| a.name.clone()).collect();
    assert_eq!(names.len(), ids.len());
    assert!(
        !redis.keys("runstate:rid:*").is_empty(),
        "records live in Redis"
    );
}

#[tokio::test]
async fn three_replicas_share_one_write_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (graph, running) = emulator().await;
    graph.set_write_limit(Some((30, Duration::from_secs(3))));
    let url = running.base_url();
    let flags = [
        "--state-store",
        &redis.url(),
        "--write-budget",
        "30/3s",
        "--replicas",
        "3",
    ];
    let gateways = [
        gateway(&url, &flags).await,
        gateway(&url, &flags).await,
        gateway(&url, &flags).await,
    ];
    // Each replica alone would send its 30 at once: 90 in the first window.
    let mut calls = Vec::new();
    for n in 0..90 {
        let mut client = gateways[n % 3].client.clone();
        calls.push(tokio::spawn(async move {
            let r = create(&uuid::Uuid::new_v4().to_string(), &n.to_string());
            client.create_compliance_script_device_state(r).await
        }));
    }
    for (n, call) in calls.into_iter().enumerate() {
        call.await
            .unwrap()
            .unwrap_or_else(|e| panic!("create {n}: {e:?}"));
    }
    assert_eq!(graph.throttled_count(), 0, "the replicas kept one budget");
    assert_eq!(posts(&graph), 90);
}

#[tokio::test]
async fn stopping_redis_mid_run_fails_no_call_and_it_recovers() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (graph, running) = emulator().await;
    let url = running.base_url();
    let flags = [
        "--state-store",
        &redis.url(),
        "--graph-client-ids",
        "ignore",
        "--replicas",
        "3",
    ];
    let gateways = [
        gateway(&url, &flags).await,
        gateway(&url, &flags).await,
        gateway(&url, &flags).await,
    ];
    let ids: Vec<String> = (0..60).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut answers = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        if n == 20 {
            redis.stop();
        }
        let mut client = gateways[n % 3].client.clone();
        let answer = client
            .create_compliance_script_device_state(create(id, "x"))
            .await
            .unwrap_or_else(|e| panic!("call {n} failed: {e:?}"));
        answers.push(answer.into_inner());
    }
    assert_eq!(posts(&graph), 60);
    // Replays on the replica that answered still get the first answer.
    for (n, id) in ids.iter().enumerate() {
        let mut client = gateways[n % 3].client.clone();
        let again = client
            .create_compliance_script_device_state(create(id, "x"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, answers[n], "replay {n}");
    }
    assert_eq!(posts(&graph), 60, "no second POST");

    // Redis returns: the gateways use it again by themselves.
    redis.restart();
    let until = Instant::now() + Duration::from_secs(60);
    let mut client = gateways[0].client.clone();
    loop {
        let id = uuid::Uuid::new_v4().to_string();
        client
            .create_compliance_script_device_state(create(&id, "y"))
            .await
            .expect("calls succeed while Redis comes back");
        if !redis.keys("runstate:rid:*").is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "the gateway never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
