//! Which token reaches Graph.

use runstate_gateway::pb::{
    CreateScriptDeviceStateRequest, CreateScriptUserStateRequest, ScriptDeviceState,
    ScriptUserState,
};
use tonic::Code;

use crate::helpers::{TOKEN, spawn_app, spawn_app_with, with_token};

fn create_device_state() -> CreateScriptDeviceStateRequest {
    CreateScriptDeviceStateRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_callers_token_is_forwarded_for_delegated_only_calls() {
    let mut app = spawn_app().await;
    app.client
        .create_script_device_state(with_token(create_device_state(), "user-delegated-token"))
        .await
        .unwrap();
    assert_eq!(
        app.requests()[0].header("authorization"),
        Some("Bearer user-delegated-token")
    );
}

#[tokio::test]
async fn the_static_token_is_used_otherwise() {
    let mut app = spawn_app().await;
    app.client
        .create_script_device_state(create_device_state())
        .await
        .unwrap();
    assert_eq!(
        app.requests()[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn no_token_is_unauthenticated_without_calling_graph() {
    let mut app = spawn_app_with(&[]).await;
    let status = app
        .client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: "deviceShellScripts/s".into(),
            script_user_state: Some(ScriptUserState::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(app.graph.request_count(), 0);
}

#[tokio::test]
async fn tokens_are_not_echoed_in_errors() {
    let mut app = spawn_app_with(&[]).await;
    app.graph
        .inject(runstate_emulator::Fault::status(401).code("InvalidAuthenticationToken"));
    let status = app
        .client
        .create_script_device_state(with_token(create_device_state(), "very-secret-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!format!("{status:?}").contains("very-secret-token"));
}

// ---- The gateway's own credentials (`--auth`), against the emulator's
// ---- identity endpoints.

pub(crate) mod credentials {
    use std::time::Duration;

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use runstate_emulator::{Emulator, RunningEmulator};
    use runstate_gateway::{
        config::ServeArgs,
        pb::{CreateScriptDeviceStateRequest, GetScriptDeviceStateRequest, ScriptDeviceState},
        startup::Application,
    };
    use tonic::{Code, Request};
    use tonic_types::StatusExt;

    use crate::helpers::{TestApp, start, with_token};

    pub const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
    pub const TENANT: &str = "contoso.onmicrosoft.com";

    pub use crate::helpers::Dir;

    /// A gateway with `flags`, its Graph and identity platform an emulator
    /// prepared by `setup`, which then accepts only tokens it issued.
    pub struct Rig {
        pub app: TestApp,
        pub graph: Emulator,
        _upstream: RunningEmulator,
    }

    pub async fn rig(flags: &[&str], setup: impl FnOnce(&Emulator)) -> Rig {
        let graph = Emulator::new();
        setup(&graph);
        graph.require_issued_tokens(true);
        let upstream = graph.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
        let url = upstream.base_url();
        let authority = format!("http://{}", upstream.addr());
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--graph-url",
            url.as_str(),
            "--authority-host",
            authority.as_str(),
            "--imds-endpoint",
            authority.as_str(),
            "--tenant-id",
            TENANT,
        ];
        args.extend_from_slice(flags);
        let mut app = start(&args).await;
        app.graph = graph.clone();
        Rig {
            app,
            graph,
            _upstream: upstream,
        }
    }

    /// `--auth MODE` with the test app's client id and a secret file.
    pub fn secret_flags<'a>(mode: &'a str, secret: &'a str) -> [&'a str; 6] {
        [
            "--auth",
            mode,
            "--client-id",
            CLIENT,
            "--client-secret-file",
            secret,
        ]
    }

    pub fn create() -> CreateScriptDeviceStateRequest {
        CreateScriptDeviceStateRequest {
            parent: "deviceManagementScripts/s".into(),
            script_device_state: Some(ScriptDeviceState::default()),
            ..Default::default()
        }
    }

    fn get() -> GetScriptDeviceStateRequest {
        GetScriptDeviceStateRequest {
            name: "deviceManagementScripts/s/deviceRunStates/d1".into(),
        }
    }

    /// The bearer token of the last Graph request.
    pub fn last_graph_token(graph: &Emulator) -> String {
        let requests = graph.requests();
        let auth = requests
            .last()
            .and_then(|r| r.header("authorization"))
            .unwrap();
        auth.strip_prefix("Bearer ").unwrap().to_owned()
    }

    /// An unsigned JWT-shaped token with these claims.
    pub fn jwt(claims: serde_json::Value) -> String {
        let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{head}.{body}.c2lnbmF0dXJl")
    }

    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn federated_token(subject: &str, exp: u64) -> String {
        jwt(serde_json::json!({
            "aud": ["api://AzureADTokenExchange"],
            "iss": "https://oidc.prod-aks.azure.com/tenant/issuer/",
            "sub": subject,
            "exp": exp,
            "iat": now(),
        }))
    }

    #[tokio::test]
    async fn client_secret_gets_an_app_token_that_graph_accepts() {
        let dir = Dir::new();
        let secret = dir.write("secret", "the-right-secret\n");
        let mut rig = rig(&secret_flags("client-secret", &secret), |g| {
            g.add_client_secret(CLIENT, "the-right-secret")
        })
        .await;
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        let token = last_graph_token(&rig.graph);
        let issued = rig
            .graph
            .issued_token(&token)
            .expect("an emulator-issued token");
        assert_eq!(issued.grant, "client_credentials");
        assert_eq!(issued.client_id.as_deref(), Some(CLIENT));
        let grants = rig.graph.token_grants();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].kind, "secret");
        assert_eq!(grants[0].tenant.as_deref(), Some(TENANT));
        assert_eq!(
            grants[0].scope.as_deref(),
            Some("https://graph.microsoft.com/.default")
        );
        // Later calls reuse the cached token.
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        assert_eq!(rig.graph.token_requests(), 1);
        assert_eq!(rig.graph.rejected_graph_calls(), 0);
    }

    #[tokio::test]
    async fn a_wrong_secret_is_unauthenticated_with_entras_error_and_graph_is_not_called() {
        let dir = Dir::new();
        let secret = dir.write("secret", "wrong-secret-value");
        let mut rig = rig(&secret_flags("client-secret", &secret), |g| {
            g.add_client_secret(CLIENT, "the-right-secret")
        })
        .await;
        let status = rig
            .app
            .client
            .create_script_device_state(create())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("AADSTS7000215"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("invalid_client"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("Invalid client secret"),
            "{}",
            status.message()
        );
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "invalid_client");
        assert_eq!(info.metadata["aadsts"], "AADSTS7000215");
        assert!(!format!("{status:?}").contains("wrong-secret-value"));
        assert!(!format!("{status:?}").contains("the-right-secret"));
        assert_eq!(rig.graph.request_count(), 0);
    }

    /// 1000 calls at once: one token request, whether it succeeds, is
    /// refused or meets an outage.
    #[tokio::test]
    async fn a_thousand_concurrent_calls_make_one_token_request() {
        for case in ["ok", "wrong secret", "outage"] {
            let dir = Dir::new();
            let secret = dir.write(
                "secret",
                if case == "wrong secret" {
                    "nope"
                } else {
                    "right"
                },
            );
            let rig = rig(
                &[
                    "--auth",
                    "client-secret",
                    "--client-id",
                    CLIENT,
                    "--client-secret-file",
                    &secret,
                    // All 1000 in flight at once on the one connection.
                    "--max-streams-per-connection",
                    "1000",
                ],
                |g| {
                    g.add_client_secret(CLIENT, "right");
                    g.set_identity_latency(Duration::from_millis(300));
                    if case == "outage" {
                        g.set_identity_outage(Some(503));
                    }
                },
            )
            .await;
            let client = rig.app.client.clone();
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..1000 {
                let mut client = client.clone();
                calls.spawn(async move {
                    let mut r = Request::new(get());
                    r.set_timeout(Duration::from_secs(60));
                    client
                        .get_script_device_state(r)
                        .await
                        .map(|_| ())
                        .map_err(|s| s.code())
                });
            }
            let mut codes = std::collections::HashMap::new();
            while let Some(r) = calls.join_next().await {
                let code = match r.unwrap() {
                    Ok(()) => Code::Ok,
                    Err(c) => c,
                };
                *codes.entry(code).or_insert(0) += 1;
            }
            let want = match case {
                // The state does not exist: Graph answered, with the token.
                "ok" => Code::NotFound,
                "wrong secret" => Code::Unauthenticated,
                _ => Code::Unavailable,
            };
            assert_eq!(codes.get(&want), Some(&1000), "{case}: {codes:?}");
            assert_eq!(rig.graph.token_requests(), 1, "{case}");
        }
    }

    #[tokio::test]
    async fn a_token_near_expiry_is_refreshed_in_the_background() {
        let dir = Dir::new();
        let secret = dir.write("secret", "right");
        let mut rig = rig(&secret_flags("client-secret", &secret), |g| {
            g.add_client_secret(CLIENT, "right");
            // Refreshed from 5 s on, usable until 9 s.
            g.set_token_lifetime(Duration::from_secs(10));
        })
        .await;
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        let first = last_graph_token(&rig.graph);
        tokio::time::sleep(Duration::from_millis(6000)).await;
        // Past the refresh point: served at once with the current token,
        // while a refresh starts behind it.
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        assert_eq!(last_graph_token(&rig.graph), first);
        for _ in 0..100 {
            if rig.graph.token_requests() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rig.graph.token_requests(), 2);
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        let second = last_graph_token(&rig.graph);
        assert_ne!(second, first);
        assert!(rig.graph.issued_token(&second).is_some());
        assert_eq!(rig.graph.rejected_graph_calls(), 0);
    }

    #[tokio::test]
    async fn a_rotated_token_file_is_picked_up() {
        let dir = Dir::new();
        let file = dir.write("token", "first-static-token\n");
        let mut app =
            crate::helpers::spawn_app_with(&["--auth", "static", "--graph-token-file", &file])
                .await;
        app.client
            .create_script_device_state(create())
            .await
            .unwrap();
        assert_eq!(
            app.requests().last().unwrap().header("authorization"),
            Some("Bearer first-static-token")
        );
        dir.write("token", "the-second-static-token");
        let mut seen = String::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            app.client
                .create_script_device_state(create())
                .await
                .unwrap();
            seen = app
                .requests()
                .last()
                .unwrap()
                .header("authorization")
                .unwrap()
                .to_owned();
            if seen == "Bearer the-second-static-token" {
                break;
            }
        }
        assert_eq!(seen, "Bearer the-second-static-token");
    }

    #[tokio::test]
    async fn workload_identity_reads_the_federated_token_for_every_request() {
        let dir = Dir::new();
        let file = dir.write(
            "azure-identity-token",
            &federated_token("system:serviceaccount:ns:first", now() + 3600),
        );
        let mut rig = rig(
            &[
                "--auth",
                "workload-identity",
                "--client-id",
                CLIENT,
                "--federated-token-file",
                &file,
            ],
            |g| {
                g.allow_federated(CLIENT);
                g.set_token_lifetime(Duration::from_secs(1));
            },
        )
        .await;
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        dir.write(
            "azure-identity-token",
            &federated_token("system:serviceaccount:ns:second", now() + 3600),
        );
        // The 1 s token is unusable after 0.9 s: the next call fetches again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        let grants = rig.graph.token_grants();
        assert!(grants.len() >= 2, "{grants:?}");
        assert!(
            grants.iter().all(|g| g.kind == "federated" && g.issued),
            "{grants:?}"
        );
        assert_eq!(
            grants[0].subject.as_deref(),
            Some("system:serviceaccount:ns:first")
        );
        assert_eq!(
            grants.last().unwrap().subject.as_deref(),
            Some("system:serviceaccount:ns:second")
        );
        assert_eq!(rig.graph.rejected_graph_calls(), 0);

        // An expired projected token: Entra's answer, as UNAUTHENTICATED.
        dir.write(
            "azure-identity-token",
            &federated_token("system:serviceaccount:ns:old", now() - 3600),
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let status = rig
            .app
            .client
            .create_script_device_state(create())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("AADSTS700024"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn managed_identity_from_imds_with_a_user_assigned_identity() {
        let mut rig = rig(
            &[
                "--auth",
                "managed-identity",
                "--client-id",
                "uami-client-id",
            ],
            |_| {},
        )
        .await;
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        let grants = rig.graph.token_grants();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].kind, "imds");
        assert_eq!(grants[0].client_id.as_deref(), Some("uami-client-id"));
        assert_eq!(
            grants[0].scope.as_deref(),
            Some("https://graph.microsoft.com")
        );
        let issued = rig
            .graph
            .issued_token(&last_graph_token(&rig.graph))
            .unwrap();
        assert_eq!(issued.grant, "managed_identity");
    }

    #[tokio::test]
    async fn an_unreachable_identity_endpoint_is_unavailable() {
        let mut app = crate::helpers::spawn_app_with(&[
            "--auth",
            "managed-identity",
            "--imds-endpoint",
            "http://127.0.0.1:9",
        ])
        .await;
        let status = app
            .client
            .create_script_device_state(create())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(app.graph.request_count(), 0);
    }

    /// A PEM with an RSA key (a fixture: ring cannot make RSA keys) and a
    /// certificate for it made by rcgen; returns the PEM and the DER.
    pub fn app_certificate(name: &str) -> (String, Vec<u8>) {
        let key_pem = include_str!("../fixtures/test-app-rsa-key.pem");
        let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (format!("{}{}", cert.pem(), key_pem), cert.der().to_vec())
    }

    #[tokio::test]
    async fn client_certificate_signs_an_assertion_entra_verifies() {
        let dir = Dir::new();
        let (pem, der) = app_certificate("app");
        let path = dir.write("app.pem", &pem);
        let mut rig = rig(
            &[
                "--auth",
                "client-certificate",
                "--client-id",
                CLIENT,
                "--client-certificate-path",
                &path,
            ],
            |g| g.add_client_certificate(CLIENT, &der),
        )
        .await;
        rig.app
            .client
            .create_script_device_state(create())
            .await
            .unwrap();
        let grants = rig.graph.token_grants();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].kind, "certificate");
        assert!(
            rig.graph
                .issued_token(&last_graph_token(&rig.graph))
                .is_some()
        );
    }

    #[tokio::test]
    async fn an_unregistered_certificate_is_refused() {
        let dir = Dir::new();
        let (pem, _) = app_certificate("app");
        let (_, other) = app_certificate("another-app");
        let path = dir.write("app.pem", &pem);
        let mut rig = rig(
            &[
                "--auth",
                "client-certificate",
                "--client-id",
                CLIENT,
                "--client-certificate-path",
                &path,
            ],
            |g| g.add_client_certificate(CLIENT, &other),
        )
        .await;
        let status = rig
            .app
            .client
            .create_script_device_state(create())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("AADSTS700027"),
            "{}",
            status.message()
        );
    }

    pub fn user_token(client: &str, user: &str, exp: u64) -> String {
        jwt(serde_json::json!({
            "aud": format!("api://{client}"),
            "iss": "https://sts.windows.net/tenant/",
            "oid": user,
            "scp": "access_as_user",
            "exp": exp,
        }))
    }

    #[tokio::test]
    async fn on_behalf_of_exchanges_each_users_token_once() {
        let dir = Dir::new();
        let secret = dir.write("secret", "right");
        let mut rig = rig(&secret_flags("on-behalf-of", &secret), |g| {
            g.add_client_secret(CLIENT, "right")
        })
        .await;
        let alice = user_token(CLIENT, "alice-oid", now() + 3600);
        let bob = user_token(CLIENT, "bob-oid", now() + 3600);
        for _ in 0..3 {
            rig.app
                .client
                .create_script_device_state(with_token(create(), &alice))
                .await
                .unwrap();
        }
        let issued = rig
            .graph
            .issued_token(&last_graph_token(&rig.graph))
            .unwrap();
        assert_eq!(issued.grant, "on_behalf_of");
        assert_eq!(issued.user.as_deref(), Some("alice-oid"));
        assert_eq!(rig.graph.token_requests(), 1);
        rig.app
            .client
            .create_script_device_state(with_token(create(), &bob))
            .await
            .unwrap();
        let issued = rig
            .graph
            .issued_token(&last_graph_token(&rig.graph))
            .unwrap();
        assert_eq!(issued.user.as_deref(), Some("bob-oid"));
        assert_eq!(rig.graph.token_requests(), 2);

        // No user token, or an expired one.
        let status = rig
            .app
            .client
            .create_script_device_state(create())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let expired = user_token(CLIENT, "carol-oid", now() - 600);
        let status = rig
            .app
            .client
            .create_script_device_state(with_token(create(), &expired))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("AADSTS500133"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains(&expired));
        assert_eq!(rig.graph.rejected_graph_calls(), 0);
    }

    #[tokio::test]
    async fn the_callers_token_wins_unless_ignored() {
        let dir = Dir::new();
        let secret = dir.write("secret", "right");
        let flags = secret_flags("client-secret", &secret);
        let mut first = rig(&flags, |g| g.add_client_secret(CLIENT, "right")).await;
        first.graph.require_issued_tokens(false);
        first
            .app
            .client
            .create_script_device_state(with_token(create(), "callers-own-token"))
            .await
            .unwrap();
        assert_eq!(last_graph_token(&first.graph), "callers-own-token");
        assert_eq!(first.graph.token_requests(), 0);

        let mut with_ignore = flags.to_vec();
        with_ignore.push("--ignore-caller-token");
        let mut rig2 = rig(&with_ignore, |g| g.add_client_secret(CLIENT, "right")).await;
        rig2.app
            .client
            .create_script_device_state(with_token(create(), "callers-own-token"))
            .await
            .unwrap();
        assert_ne!(last_graph_token(&rig2.graph), "callers-own-token");
        assert_eq!(rig2.graph.token_requests(), 1);
    }

    #[tokio::test]
    async fn passthrough_needs_the_callers_token() {
        let mut app =
            crate::helpers::spawn_app_with(&["--auth", "passthrough", "--graph-token", "unused"])
                .await;
        let status = app
            .client
            .create_script_device_state(create())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(app.graph.request_count(), 0);
        app.client
            .create_script_device_state(with_token(create(), "callers"))
            .await
            .unwrap();
        assert_eq!(
            app.requests()[0].header("authorization"),
            Some("Bearer callers")
        );
    }

    #[tokio::test]
    async fn the_embedded_emulator_serves_tokens_for_a_credential_mode() {
        let dir = Dir::new();
        let secret = dir.write("secret", "local-secret");
        let mut app = start(&[
            "--listen",
            "127.0.0.1:0",
            "--emulator",
            "--auth",
            "client-secret",
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT,
            "--client-secret-file",
            &secret,
        ])
        .await;
        app.client
            .create_script_device_state(create())
            .await
            .unwrap();
        assert_eq!(app.graph.token_requests(), 1);
        // It now refuses tokens it did not issue.
        app.client
            .create_script_device_state(with_token(create(), "made-up"))
            .await
            .unwrap_err();
        assert_eq!(app.graph.rejected_graph_calls(), 1);
    }

    async fn build_error(flags: &[&str]) -> String {
        let args = ServeArgs::from_args(flags).unwrap();
        match Application::build(&args).await {
            Ok(_) => panic!("{flags:?} should be refused"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[tokio::test]
    async fn plain_http_upstreams_need_loopback_or_the_opt_in() {
        let e = build_error(&[
            "--listen",
            "127.0.0.1:0",
            "--graph-url",
            "http://graph.internal/beta",
        ])
        .await;
        assert!(e.contains("--allow-http-upstream"), "{e}");
        let e = build_error(&[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "client-secret",
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT,
            "--client-secret-file",
            "/dev/null",
            "--authority-host",
            "http://login.internal",
        ])
        .await;
        assert!(e.contains("--allow-http-upstream"), "{e}");
        let args = ServeArgs::from_args([
            "--listen",
            "127.0.0.1:0",
            "--graph-url",
            "http://graph.internal/beta",
            "--allow-http-upstream",
        ])
        .unwrap();
        assert!(Application::build(&args).await.is_ok());
    }

    #[tokio::test]
    async fn a_plaintext_listener_off_loopback_needs_the_opt_in() {
        let e = build_error(&["--listen", "0.0.0.0:0"]).await;
        assert!(e.contains("--allow-plaintext") && e.contains("TLS"), "{e}");
        let args = ServeArgs::from_args(["--listen", "0.0.0.0:0", "--allow-plaintext"]).unwrap();
        assert!(runstate_gateway::tls::check_plaintext(&args.listener).is_ok());
    }

    #[tokio::test]
    async fn missing_credential_settings_fail_startup_naming_them() {
        let e = build_error(&[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "client-secret",
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT,
        ])
        .await;
        assert!(e.contains("AZURE_CLIENT_SECRET"), "{e}");
        let e = build_error(&[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "workload-identity",
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT,
        ])
        .await;
        assert!(e.contains("AZURE_FEDERATED_TOKEN_FILE"), "{e}");
        let e = build_error(&["--listen", "127.0.0.1:0", "--auth", "static"]).await;
        assert!(e.contains("--graph-token"), "{e}");
    }

    #[test]
    fn help_names_every_mode_and_cloud() {
        use clap::CommandFactory;
        let help = runstate_gateway::config::Cli::command()
            .render_long_help()
            .to_string();
        for word in [
            "passthrough",
            "static",
            "client-secret",
            "client-certificate",
            "workload-identity",
            "managed-identity",
            "on-behalf-of",
            "global",
            "usgov",
            "usgov-dod",
            "china",
            "GRAPH_AUTH",
            "GRAPH_CLOUD",
        ] {
            assert!(help.contains(word), "--help lacks {word}");
        }
    }

    #[tokio::test]
    async fn a_national_cloud_sets_graph_and_the_authority() {
        let dir = Dir::new();
        let secret = dir.write("secret", "right");
        let graph = Emulator::new();
        graph.add_client_secret(CLIENT, "right");
        let upstream = graph.spawn(([127, 0, 0, 1], 0).into()).await.unwrap();
        let authority = format!("http://{}", upstream.addr());
        // --cloud china with an explicit authority (the emulator): the scope
        // is China's Graph.
        let url = upstream.base_url();
        let mut app = start(&[
            "--listen",
            "127.0.0.1:0",
            "--cloud",
            "china",
            "--graph-url",
            &url,
            "--authority-host",
            &authority,
            "--auth",
            "client-secret",
            "--tenant-id",
            TENANT,
            "--client-id",
            CLIENT,
            "--client-secret-file",
            &secret,
        ])
        .await;
        app.client
            .create_script_device_state(create())
            .await
            .unwrap();
        assert_eq!(
            graph.token_grants()[0].scope.as_deref(),
            Some("https://microsoftgraph.chinacloudapi.cn/.default")
        );
        drop(upstream);
    }
}

// ---- Inbound TLS and mutual TLS.

mod tls {
    use std::{net::SocketAddr, sync::Arc, time::Duration};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use runstate_gateway::{
        config::ServeArgs,
        pb::{GetScriptDeviceStateRequest, run_state_service_client::RunStateServiceClient},
        startup::Application,
    };
    use rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    };
    use tokio::sync::oneshot;
    use tonic::{Code, transport::Endpoint};

    use super::credentials::Dir;

    type Ca = CertifiedIssuer<'static, KeyPair>;

    fn ca(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    /// A leaf certificate and key, as PEM.
    fn leaf(ca: &Ca, cn: &str, sans: &[&str], client: bool) -> (String, String) {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    struct Server {
        addr: SocketAddr,
        _stop: oneshot::Sender<()>,
    }

    async fn serve(flags: &[&str]) -> Server {
        let mut args = vec!["--listen", "127.0.0.1:0", "--emulator"];
        args.extend_from_slice(flags);
        let app = Application::build(&ServeArgs::from_args(args).unwrap())
            .await
            .unwrap();
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Server { addr, _stop: tx }
    }

    /// One call over TLS trusting `server_ca`, with an optional client
    /// certificate: `Ok` when it reached the service (NOT_FOUND is fine).
    async fn call(
        addr: SocketAddr,
        server_ca: &Ca,
        identity: Option<&(String, String)>,
    ) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(server_ca.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let service = tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        let channel = Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(10))
            .connect_with_connector(service)
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut client = RunStateServiceClient::new(channel);
        match client
            .get_script_device_state(GetScriptDeviceStateRequest {
                name: "deviceManagementScripts/s/deviceRunStates/d".into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(format!("call: {s:?}")),
        }
    }

    struct Pki {
        dir: Dir,
        server_ca: Ca,
        cert: String,
        key: String,
    }

    fn pki() -> Pki {
        let dir = Dir::new();
        let server_ca = ca("Server CA");
        let (c, k) = leaf(&server_ca, "gateway", &["localhost"], false);
        let cert = dir.write("tls.crt", &c);
        let key = dir.write("tls.key", &k);
        Pki {
            dir,
            server_ca,
            cert,
            key,
        }
    }

    #[tokio::test]
    async fn tls_serves_tls_clients_and_refuses_plaintext() {
        let p = pki();
        let server = serve(&["--tls-cert", &p.cert, "--tls-key", &p.key]).await;
        call(server.addr, &p.server_ca, None).await.unwrap();
        // A plaintext client gets nowhere.
        let plain = async {
            let mut c = RunStateServiceClient::connect(format!("http://{}", server.addr)).await?;
            c.get_script_device_state(GetScriptDeviceStateRequest::default())
                .await
                .map(|_| ())
                .map_err(Into::into)
        };
        let result: Result<(), Box<dyn std::error::Error>> =
            tokio::time::timeout(Duration::from_secs(20), plain)
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
        assert!(result.is_err());
        // A client that does not trust the server's CA refuses it.
        assert!(call(server.addr, &ca("Other CA"), None).await.is_err());
    }

    #[tokio::test]
    async fn mutual_tls_admits_only_allowed_clients_of_the_ca() {
        let p = pki();
        let client_ca = ca("Client CA");
        let ca_path = p.dir.write("clients-ca.crt", &client_ca.pem());
        let server = serve(&[
            "--tls-cert",
            &p.cert,
            "--tls-key",
            &p.key,
            "--tls-client-ca",
            &ca_path,
            "--allow-client",
            "billing.svc.cluster.local",
            "--allow-client",
            "inventory",
        ])
        .await;
        let by_san = leaf(&client_ca, "billing", &["billing.svc.cluster.local"], true);
        let by_cn = leaf(&client_ca, "inventory", &[], true);
        let not_listed = leaf(&client_ca, "mallory", &["mallory.svc.cluster.local"], true);
        let other_ca = leaf(
            &ca("Rogue CA"),
            "inventory",
            &["billing.svc.cluster.local"],
            true,
        );
        call(server.addr, &p.server_ca, Some(&by_san))
            .await
            .unwrap();
        call(server.addr, &p.server_ca, Some(&by_cn)).await.unwrap();
        assert!(
            call(server.addr, &p.server_ca, Some(&not_listed))
                .await
                .is_err()
        );
        assert!(
            call(server.addr, &p.server_ca, Some(&other_ca))
                .await
                .is_err()
        );
        assert!(call(server.addr, &p.server_ca, None).await.is_err());
    }

    #[tokio::test]
    async fn mutual_tls_without_an_allow_list_admits_any_client_of_the_ca() {
        let p = pki();
        let client_ca = ca("Client CA");
        let ca_path = p.dir.write("clients-ca.crt", &client_ca.pem());
        let server = serve(&[
            "--tls-cert",
            &p.cert,
            "--tls-key",
            &p.key,
            "--tls-client-ca",
            &ca_path,
        ])
        .await;
        let anyone = leaf(&client_ca, "anyone", &[], true);
        call(server.addr, &p.server_ca, Some(&anyone))
            .await
            .unwrap();
        let rogue = leaf(&ca("Rogue CA"), "anyone", &[], true);
        assert!(call(server.addr, &p.server_ca, Some(&rogue)).await.is_err());
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_without_a_restart() {
        let p = pki();
        let server = serve(&["--tls-cert", &p.cert, "--tls-key", &p.key]).await;
        let renewed_ca = ca("Renewed CA");
        assert!(call(server.addr, &renewed_ca, None).await.is_err());
        let (c, k) = leaf(&renewed_ca, "gateway", &["localhost"], false);
        p.dir.write("tls.key", &k);
        p.dir.write("tls.crt", &c);
        let mut last = Err(String::new());
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            last = call(server.addr, &renewed_ca, None).await;
            if last.is_ok() {
                break;
            }
        }
        last.unwrap();
    }
}
