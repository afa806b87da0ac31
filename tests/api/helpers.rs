//! Shared test setup: `spawn_app()` returns the gateway, its emulator and a client.

use std::net::SocketAddr;

use runstate_emulator::{Emulator, Recorded, RunningEmulator};
use runstate_gateway::{
    config::ServeArgs, pb::run_state_service_client::RunStateServiceClient, startup::Application,
};
use tokio::sync::oneshot;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

pub const TOKEN: &str = "test-static-token";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: RunStateServiceClient<Channel>,
    pub graph: Emulator,
    /// The emulator's base URL, for a second gateway in front of it.
    pub graph_url: String,
    _upstream: Option<RunningEmulator>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A gateway with a static token, in front of a fresh emulator.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&["--graph-token", TOKEN]).await
}

/// A gateway with extra flags, in front of a fresh emulator.
pub async fn spawn_app_with(flags: &[&str]) -> TestApp {
    let graph = Emulator::new();
    // These tests were written for a Graph that keeps chosen ids.
    graph.set_client_ids(runstate_emulator::ClientIds::Honour);
    let upstream = graph
        .spawn(([127, 0, 0, 1], 0).into())
        .await
        .expect("emulator starts");
    let url = upstream.base_url();
    let mut args = vec!["--listen", "127.0.0.1:0", "--graph-url", url.as_str()];
    args.extend_from_slice(flags);
    let mut app = start(&args).await;
    app.graph = graph;
    app.graph_url = url.clone();
    app._upstream = Some(upstream);
    app
}

/// A gateway started with exactly these flags (e.g. `--emulator`).
pub async fn start(args: &[&str]) -> TestApp {
    let config = ServeArgs::from_args(args).expect("valid flags");
    let app = Application::build(&config).await.expect("gateway builds");
    let addr = app.local_addr();
    let graph = app
        .emulator()
        .map(|e| e.emulator().clone())
        .unwrap_or_default();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = RunStateServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("client connects");
    TestApp {
        addr,
        client,
        graph,
        graph_url: String::new(),
        _upstream: None,
        shutdown: Some(tx),
    }
}

impl TestApp {
    /// Requests the emulator received, without the test's own setup calls.
    pub fn requests(&self) -> Vec<Recorded> {
        self.graph.requests()
    }

    /// The methods of [`TestApp::requests`], in order.
    pub fn methods(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.method).collect()
    }

    /// Graph applies the next POST, then its answer is lost behind a 504.
    pub fn lose_the_next_answer(&self) {
        self.graph.inject(
            runstate_emulator::Fault::status(504)
                .method("POST")
                .after_apply()
                .times(1),
        );
    }
}

/// A request with the given `authorization` metadata.
pub fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Asserts a refusal by one of the gateway's budgets: RESOURCE_EXHAUSTED,
/// ErrorInfo `reason`, and a RetryInfo delay longer than `at_least`.
pub fn assert_budget_refusal(status: &Status, reason: &str, at_least: std::time::Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, reason);
    let delay = details.retry_info().unwrap().retry_delay.unwrap();
    assert!(delay > at_least, "{delay:?}");
}

/// Asserts INVALID_ARGUMENT with a `BadRequest` violation on `field`.
pub fn assert_violation(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "no violation on {field}: {:?}",
        bad.field_violations
    );
}

pub fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// A scratch directory, removed on drop.
pub struct Dir(pub std::path::PathBuf);

impl Dir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("runstate-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    /// Writes `name` (then renames it into place, as a secret mount swaps
    /// files) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p.to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
