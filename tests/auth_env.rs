//! Secrets read from the environment (`AZURE_CLIENT_SECRET`,
//! `IDENTITY_HEADER`), App Service managed identity, and no token or secret
//! in any log line at trace level. A test binary of its own: it sets
//! process-wide environment variables and a thread's log subscriber.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use runstate_emulator::Emulator;
use runstate_gateway::pb::{CreateScriptDeviceStateRequest, ScriptDeviceState};
use tonic::Code;

use helpers::{start, with_token};

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const ENV_SECRET: &str = "env-client-s3cret-DDD";
const IDENTITY_HEADER: &str = "identity-header-s3cret-EEE";

fn create() -> CreateScriptDeviceStateRequest {
    CreateScriptDeviceStateRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        ..Default::default()
    }
}

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

fn user_token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"aud": format!("api://{CLIENT}"), "oid": user, "exp": exp});
    format!(
        "{}.{}.dXNlci1zaWduYXR1cmUtRkZG",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn secrets_come_from_the_environment_and_never_reach_the_logs() {
    // SAFETY: the only test of this binary, before any other thread starts.
    unsafe {
        std::env::set_var("AZURE_CLIENT_SECRET", ENV_SECRET);
        std::env::set_var("IDENTITY_HEADER", IDENTITY_HEADER);
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let graph = Emulator::new();
    graph.add_client_secret(CLIENT, ENV_SECRET);
    graph.set_identity_header(IDENTITY_HEADER);
    graph.require_issued_tokens(true);
    let upstream = graph.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
    let url = upstream.base_url();
    let authority = format!("http://{}", upstream.addr());
    let common = [
        "--listen",
        "127.0.0.1:0",
        "--graph-url",
        url.as_str(),
        "--authority-host",
        authority.as_str(),
        "--tenant-id",
        "contoso.onmicrosoft.com",
        "--client-id",
        CLIENT,
    ];
    let with = |extra: &[&'static str]| {
        let mut v: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        start(&refs).await
    };

    // Client secret from AZURE_CLIENT_SECRET.
    let mut app = run(with(&["--auth", "client-secret"])).await;
    app.client
        .create_script_device_state(create())
        .await
        .unwrap();
    assert_eq!(graph.token_grants().last().unwrap().kind, "secret");

    // App Service managed identity: IDENTITY_ENDPOINT + IDENTITY_HEADER.
    let endpoint = format!("{authority}/msi/token");
    let mut args = with(&["--auth", "managed-identity", "--identity-endpoint"]);
    args.push(endpoint);
    let mut app = run(args).await;
    app.client
        .create_script_device_state(create())
        .await
        .unwrap();
    let grant = graph.token_grants().last().unwrap().clone();
    assert_eq!(grant.kind, "app_service");
    assert!(grant.issued);

    // On-behalf-of with the environment's secret.
    let user = user_token("alice-oid");
    let mut app = run(with(&["--auth", "on-behalf-of"])).await;
    app.client
        .create_script_device_state(with_token(create(), &user))
        .await
        .unwrap();
    assert_eq!(graph.token_grants().last().unwrap().kind, "on_behalf_of");

    // A refused secret.
    let other = Emulator::new();
    other.add_client_secret(CLIENT, "a-different-secret");
    let refusing = other.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
    let refusing_authority = format!("http://{}", refusing.addr());
    let mut args = with(&["--auth", "client-secret"]);
    let at = args.iter().position(|a| a == "--authority-host").unwrap();
    args[at + 1] = refusing_authority;
    let mut app = run(args).await;
    let status = app
        .client
        .create_script_device_state(create())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let graph_tokens: Vec<String> = graph
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization"))
        .map(|a| a.trim_start_matches("Bearer ").to_owned())
        .collect();
    assert_eq!(graph_tokens.len(), 3);
    let recorded = format!("{:?}", graph.requests());
    drop(app);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("TRACE") || text.contains("DEBUG"),
        "logs were captured"
    );
    assert!(text.contains("AADSTS7000215"), "the refusal is logged");
    let mut secrets = vec![
        ENV_SECRET.to_owned(),
        IDENTITY_HEADER.to_owned(),
        user.clone(),
    ];
    secrets.extend(graph_tokens);
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret or token is in the logs"
        );
        assert!(
            !recorded.contains(secret.as_str()),
            "a secret or token is in the emulator's Debug output"
        );
    }
    // Parts of the user's token (its signature) are not there either.
    assert!(!text.contains("dXNlci1zaWduYXR1cmUtRkZG"));
}
