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

/// A create that must succeed.
async fn created(app: &mut TestApp, why: &str) {
    let state = app
        .client
        .create_script_user_state(create())
        .await
        .expect(why)
        .into_inner();
    assert!(!state.id.is_empty(), "{why}: no id");
}

/// A create that must fail as UNAVAILABLE.
async fn unavailable(app: &mut TestApp, why: &str) {
    let err = app
        .client
        .create_script_user_state(create())
        .await
        .expect_err(why);
    assert_eq!(err.code(), Code::Unavailable, "{why}: {err:?}");
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
    created(&mut trusted, "trusted TLS upstream answers").await;
    assert_eq!(trusted.graph.request_count(), 1);

    let (mut untrusted, _up2) = app(false, &dir).await;
    unavailable(&mut untrusted, "an untrusted certificate must fail").await;
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

/// Token requests trust what Graph calls trust: the built-in roots and
/// `--graph-ca-file`. Graph is plain http here and the identity platform
/// TLS, so only the token request needs the CA.
#[tokio::test]
async fn token_requests_trust_the_ca_file_too() {
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
    let dir = std::env::temp_dir().join(format!("rsg-tls-id-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let secret = secret.to_str().unwrap().to_owned();
    let ca = dir.join("ca.pem");
    let ca_text = ca.to_str().unwrap().to_owned();

    let graph = Emulator::new();
    graph.add_client_secret(CLIENT, "s3cret");
    graph.require_issued_tokens(true);
    let plain = graph.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
    let identity = graph
        .spawn_tls(([127, 0, 0, 1], 0).into(), &ca)
        .await
        .unwrap();
    let graph_url = plain.base_url();
    let authority = identity.base_url().trim_end_matches("/beta").to_owned();
    assert!(authority.starts_with("https://localhost:"), "{authority}");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--graph-url",
        graph_url.as_str(),
        "--graph-max-retries",
        "0",
        "--auth",
        "client-secret",
        "--tenant-id",
        "contoso.onmicrosoft.com",
        "--client-id",
        CLIENT,
        "--client-secret-file",
        secret.as_str(),
        "--authority-host",
        authority.as_str(),
    ];

    let mut untrusted = start(&args).await;
    untrusted.graph = graph.clone();
    unavailable(&mut untrusted, "an untrusted identity platform must fail").await;
    assert_eq!(graph.token_requests(), 0, "no token was issued");
    assert_eq!(graph.request_count(), 0, "nothing reached Graph");

    args.extend(["--graph-ca-file", ca_text.as_str()]);
    let mut trusted = start(&args).await;
    trusted.graph = graph.clone();
    created(&mut trusted, "a token from the trusted identity platform").await;
    assert_eq!(graph.token_requests(), 1);
    assert_eq!(graph.rejected_graph_calls(), 0);
    assert_eq!(graph.request_count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
