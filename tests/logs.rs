//! Tokens never reach the logs. A test binary of its own: `tracing` caches
//! which log lines are enabled process-wide, which races with a thread-scoped
//! subscriber while other tests run on other threads.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use runstate_gateway::pb::{CreateScriptDeviceStateRequest, ScriptDeviceState};
use tonic::Code;

use helpers::{spawn_app_with, with_token};

fn create_device_state() -> CreateScriptDeviceStateRequest {
    CreateScriptDeviceStateRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        ..Default::default()
    }
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    // The test runtime is single-threaded, so the gateway, its Graph client
    // and the emulator all log through this thread's subscriber, at every level.
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut app = spawn_app_with(&["--graph-token", "static-s3cret-AAA"]).await;
    app.client
        .create_script_device_state(create_device_state())
        .await
        .unwrap();
    app.client
        .create_script_device_state(with_token(create_device_state(), "caller-s3cret-BBB"))
        .await
        .unwrap();
    app.graph
        .inject(runstate_emulator::Fault::status(401).code("InvalidAuthenticationToken"));
    let failed = app
        .client
        .create_script_device_state(with_token(create_device_state(), "caller-s3cret-CCC"))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Unauthenticated);
    let recorded = format!("{:?}", app.requests());
    drop(app);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("CreateScriptDeviceState"),
        "logs were captured: {} bytes",
        text.len()
    );
    for secret in [
        "static-s3cret-AAA",
        "caller-s3cret-BBB",
        "caller-s3cret-CCC",
    ] {
        assert!(!text.contains(secret), "{secret} is in the logs");
        assert!(
            !recorded.contains(secret),
            "{secret} is in the emulator's Debug output"
        );
    }
}
