//! The real `runstate-gateway` binary, started with `--emulator` on port 0
//! and JSON logs; its ports and the emulator's URL are read from its log.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub emulator_url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Starts the gateway with `--emulator`, JSON logs and `extra` flags.
pub fn spawn(extra: &[&str]) -> Gateway {
    spawn_with_format("json", extra)
}

pub fn spawn_with_format(format: &str, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--emulator",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        format,
    ];
    args.extend_from_slice(extra);
    spawn_args(&args)
}

/// Starts the binary with exactly `args` (JSON logs are expected, e.g. a
/// gateway in front of an emulator of its own, or the `emulator` command).
pub fn spawn_args(args: &[&str]) -> Gateway {
    // RUNSTATE_TEST_BINARY runs the tests against another build (to compare).
    let program = std::env::var("RUNSTATE_TEST_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_runstate-gateway").to_owned());
    let mut child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway binary starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let mut gateway = Gateway {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: None,
        emulator_url: String::new(),
        lines,
    };
    let want_admin = args.contains(&"--admin-listen");
    let emulator_only = args.first() == Some(&"emulator");
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway did not start: {:?}",
            gateway.lines()
        );
        for line in gateway.lines() {
            if line.contains("runstate-gateway listening") {
                gateway.addr = field(&line, "addr").parse().unwrap();
            } else if line.contains("admin endpoint listening") {
                gateway.admin = Some(field(&line, "addr").parse().unwrap());
            } else if line.contains("embedded Graph emulator started")
                || line.contains("Graph emulator listening")
            {
                gateway.emulator_url = field(&line, "url");
            }
        }
        if emulator_only && !gateway.emulator_url.is_empty() {
            return gateway;
        }
        if gateway.addr.port() != 0 && (!want_admin || gateway.admin.is_some()) {
            return gateway;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A field of a log line, JSON (`"addr":"…"`) or text (`addr=…`).
fn field(line: &str, name: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return v[name].as_str().unwrap_or_default().to_owned();
    }
    let start = line.find(&format!("{name}=")).expect("field in line") + name.len() + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

impl Gateway {
    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The resident set size of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// `PUT /_emulator/settings` on the embedded emulator.
    pub async fn emulator_settings(&self, json: serde_json::Value) {
        let root = self.emulator_url.trim_end_matches("/beta");
        let status = reqwest::Client::new()
            .put(format!("{root}/_emulator/settings"))
            .header("content-type", "application/json")
            .body(json.to_string())
            .send()
            .await
            .expect("emulator control API")
            .status();
        assert!(status.is_success(), "{status}");
    }

    /// `POST /_emulator/faults` on the embedded emulator.
    pub async fn emulator_fault(&self, json: serde_json::Value) {
        let root = self.emulator_url.trim_end_matches("/beta");
        let status = reqwest::Client::new()
            .post(format!("{root}/_emulator/faults"))
            .header("content-type", "application/json")
            .body(json.to_string())
            .send()
            .await
            .expect("emulator control API")
            .status();
        assert!(status.is_success(), "{status}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
