//! `runstate-gateway healthcheck`, run as a process against real servers:
//! exit 0 only when the gateway answers SERVING.

use std::{net::SocketAddr, time::Duration};

use runstate_emulator::Emulator;
use runstate_gateway::{config::ServeArgs, startup::Application};
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::helpers::spawn_app;

const BIN: &str = env!("CARGO_BIN_EXE_runstate-gateway");

/// Runs `runstate-gateway healthcheck ARGS` with only `envs` from the
/// healthcheck's and gateway's own variables; returns the exit code and stdout.
pub async fn healthcheck(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("healthcheck").args(args).kill_on_drop(true);
    if !args.contains(&"--timeout") {
        // Generous on a loaded machine; the short default is checked in unit tests.
        cmd.args(["--timeout", "30s"]);
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("RUNSTATE_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(envs.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the healthcheck finishes")
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    (out.status.code().expect("an exit code"), stdout)
}

/// A loopback port on which nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A server with only `grpc.health.v1`, reporting `status` overall.
async fn health_server(status: ServingStatus, tls: Option<Identity>) -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", status).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = Server::builder();
    if let Some(identity) = tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap();
    }
    tokio::spawn(async move {
        // Keeps the reporter alive as long as the server.
        let _reporter = reporter;
        builder
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
    });
    addr
}

#[tokio::test]
async fn exits_0_against_a_running_gateway_overall_and_per_service() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let (code, line) = healthcheck(&["--addr", &addr], &[]).await;
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("SERVING"), "{line}");

    let service = "intune.runstates.v1.RunStateService";
    let (code, line) = healthcheck(&["--addr", &addr, "--service", service], &[]).await;
    assert_eq!(code, 0, "{line}");
    assert!(line.contains(service), "{line}");

    let (code, line) = healthcheck(&["--addr", &addr, "--service", "no.such.Service"], &[]).await;
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("NOT_FOUND"), "{line}");
}

#[tokio::test]
async fn address_comes_from_env_and_from_the_gateways_listen_address() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let (code, line) = healthcheck(&[], &[("RUNSTATE_HEALTHCHECK_ADDR", &addr)]).await;
    assert_eq!(code, 0, "{line}");
    // The gateway in a container listens on 0.0.0.0: the check reaches it on loopback.
    let unspecified = format!("0.0.0.0:{}", app.addr.port());
    let (code, line) = healthcheck(&[], &[("RUNSTATE_LISTEN", &unspecified)]).await;
    assert_eq!(code, 0, "{line}");
    assert!(line.contains(&addr), "{line}");
}

#[tokio::test]
async fn exits_1_against_a_closed_port() {
    let addr = closed_port().await.to_string();
    let (code, line) = healthcheck(&["--addr", &addr], &[]).await;
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("cannot connect") && line.contains(&addr),
        "{line}"
    );
}

#[tokio::test]
async fn exits_1_after_the_gateway_stops() {
    let graph = Emulator::new()
        .spawn(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let url = graph.base_url();
    let args = ServeArgs::from_args(["--listen", "127.0.0.1:0", "--graph-url", &url]).unwrap();
    let app = Application::build(&args).await.unwrap();
    let addr = app.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let (code, line) = healthcheck(&["--addr", &addr], &[]).await;
    assert_eq!(code, 0, "{line}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the gateway stops")
        .unwrap()
        .unwrap();
    let (code, line) = healthcheck(&["--addr", &addr], &[]).await;
    assert_eq!(code, 1, "{line}");
}

#[tokio::test]
async fn exits_1_when_not_serving() {
    let addr = health_server(ServingStatus::NotServing, None)
        .await
        .to_string();
    let (code, line) = healthcheck(&["--addr", &addr], &[]).await;
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("NOT_SERVING"), "{line}");
}

#[tokio::test]
async fn exits_1_when_the_server_never_answers() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (code, line) = healthcheck(&["--addr", &addr, "--timeout", "300ms"], &[]).await;
    silent.abort();
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("300ms"), "{line}");
}

#[tokio::test]
async fn http_mode_checks_the_emulator() {
    let graph = Emulator::new()
        .spawn(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let root = graph.base_url().trim_end_matches("/beta").to_owned();
    let (code, line) = healthcheck(&["--http", &format!("{root}/_emulator/health")], &[]).await;
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("200"), "{line}");

    let (code, line) = healthcheck(&["--http", &format!("{root}/no/such/path")], &[]).await;
    assert_eq!(code, 1, "{line}");

    let closed = closed_port().await;
    let (code, line) = healthcheck(
        &["--http", &format!("http://{closed}/_emulator/health")],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("cannot reach"), "{line}");
}

/// A CA and a `localhost` certificate it signed, written to a temp dir.
struct Pki {
    dir: std::path::PathBuf,
    identity: Identity,
}

impl Pki {
    fn new(tag: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let dir =
            std::env::temp_dir().join(format!("runstate-healthcheck-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        Self {
            dir,
            identity: Identity::from_pem(leaf.pem(), key.serialize_pem()),
        }
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn tls_gateway_is_checked_with_its_ca() {
    let pki = Pki::new("ok");
    let other = Pki::new("other");
    let addr = health_server(ServingStatus::Serving, Some(pki.identity.clone()))
        .await
        .to_string();
    let ca = pki.ca();
    let (code, line) = healthcheck(
        &[
            "--addr",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "localhost",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{line}");

    // Plaintext against TLS, a wrong CA and a wrong name all fail.
    let (code, line) = healthcheck(&["--addr", &addr], &[]).await;
    assert_eq!(code, 1, "{line}");
    let wrong_ca = other.ca();
    let (code, line) = healthcheck(
        &[
            "--addr",
            &addr,
            "--tls-ca",
            &wrong_ca,
            "--tls-server-name",
            "localhost",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{line}");
    let (code, line) = healthcheck(
        &[
            "--addr",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "elsewhere",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{line}");
}
