//! Graph over HTTPS: the emulator serves TLS with a CA made for the test,
//! which the gateway trusts only through `--graph-ca-file`.

use runstate_emulator::Emulator;
use runstate_gateway::{pb::CreateScriptUserStateRequest, pb::ScriptUserState};
use tonic::Code;

use crate::auth::credentials::{CLIENT, TENANT, secret_flags};
use crate::helpers::{Dir, TestApp, start};

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
async fn app(trust: bool, dir: &std::path::Path) -> (TestApp, runstate_emulator::RunningEmulator) {
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
    let dir = Dir::new();
    let (mut trusted, _up) = app(true, &dir.0).await;
    created(&mut trusted, "trusted TLS upstream answers").await;
    assert_eq!(trusted.graph.request_count(), 1);

    let (mut untrusted, _up2) = app(false, &dir.0).await;
    unavailable(&mut untrusted, "an untrusted certificate must fail").await;
    assert_eq!(untrusted.graph.request_count(), 0, "nothing reached Graph");
}

#[tokio::test]
async fn a_bad_ca_file_stops_startup() {
    use runstate_gateway::{config::ServeArgs, startup::Application};
    let dir = Dir::new();
    let empty = dir.write("empty.pem", "");
    let junk = dir.write("junk.pem", "not a certificate\n");
    let missing = dir.0.join("missing.pem").to_str().unwrap().to_owned();
    for path in [&empty, &junk, &missing] {
        let path = path.as_str();
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
}

/// Token requests trust what Graph calls trust: the built-in roots and
/// `--graph-ca-file`. Graph is plain http here and the identity platform
/// TLS, so only the token request needs the CA.
#[tokio::test]
async fn token_requests_trust_the_ca_file_too() {
    let dir = Dir::new();
    let secret = dir.write("secret", "s3cret");
    let ca = dir.0.join("ca.pem");
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
        "--tenant-id",
        TENANT,
        "--authority-host",
        authority.as_str(),
    ];
    args.extend(secret_flags("client-secret", &secret));

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
}
