//! Graph over HTTPS: the emulator serves TLS with a CA made for the test,
//! which the gateway trusts only through `--graph-ca-file`.

use runstate_gateway::{emulator::Emulator, pb::CreateScriptUserStateRequest, pb::ScriptUserState};
use tonic::Code;

use crate::helpers::{TestApp, start};

fn create() -> CreateScriptUserStateRequest {
    CreateScriptUserStateRequest {
        parent: "deviceManagementScripts/s1".into(),
        script_user_state: Some(ScriptUserState {
            user_principal_name: Some("a@example.com".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A gateway in front of a TLS emulator; `trust` gives it the CA file.
async fn app(
    trust: bool,
    dir: &std::path::Path,
) -> (TestApp, runstate_gateway::emulator::RunningEmulator) {
    let graph = Emulator::new();
    let ca = dir.join("ca.pem");
    let upstream = graph
        .spawn_tls(([127, 0, 0, 1], 0).into(), &ca)
        .await
        .expect("TLS emulator starts");
    let url = upstream.base_url();
    assert!(url.starts_with("https://localhost:"), "{url}");
    let ca = ca.to_str().unwrap().to_owned();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--graph-url",
        &url,
        "--graph-token",
        "t",
        "--graph-max-retries",
        "0",
    ];
    if trust {
        args.extend(["--graph-ca-file", ca.as_str()]);
    }
    let mut app = start(&args).await;
    app.graph = graph;
    (app, upstream)
}

#[tokio::test]
async fn graph_over_tls_is_reached_with_the_ca_file_only() {
    let dir = std::env::temp_dir().join(format!("rsg-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut trusted, _up) = app(true, &dir).await;
    let state = trusted
        .client
        .create_script_user_state(create())
        .await
        .expect("trusted TLS upstream answers")
        .into_inner();
    assert!(!state.id.is_empty());
    assert_eq!(trusted.graph.request_count(), 1);

    let (mut untrusted, _up2) = app(false, &dir).await;
    let err = untrusted
        .client
        .create_script_user_state(create())
        .await
        .expect_err("an untrusted certificate must fail");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(untrusted.graph.request_count(), 0, "nothing reached Graph");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_ca_file_stops_startup() {
    use runstate_gateway::{config::ServeArgs, startup::Application};
    let dir = std::env::temp_dir().join(format!("rsg-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let missing = dir.join("missing.pem");
    for path in [&empty, &junk, &missing] {
        let path = path.to_str().unwrap();
        let args = ServeArgs::from_args([
            "--listen",
            "127.0.0.1:0",
            "--graph-token",
            "t",
            "--graph-ca-file",
            path,
        ])
        .unwrap();
        let err = Application::build(&args).await.err().expect("refused");
        let text = format!("{err:#}");
        assert!(
            text.contains("--graph-ca-file") && text.contains(path),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
