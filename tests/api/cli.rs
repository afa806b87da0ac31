//! The binary's startup checks: ranges, env twins, RUST_LOG.

use std::{process::Stdio, time::Duration};

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_runstate-gateway");

/// A command with none of the gateway's variables inherited from the test's environment.
fn gateway(args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).kill_on_drop(true).env("RUST_BACKTRACE", "0");
    for (name, _) in std::env::vars() {
        if name.starts_with("RUNSTATE_") || name.starts_with("GRAPH_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd
}

/// Runs to the end; returns the exit code and stderr.
async fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), gateway(args, envs).output())
        .await
        .expect("the gateway exits")
        .expect("the binary runs");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn zero_limits_are_refused_at_startup() {
    let listen = ["--listen", "127.0.0.1:0", "--emulator"];
    for flag in ["--max-concurrent-requests", "--max-request-bytes"] {
        let mut args = listen.to_vec();
        args.extend([flag, "0"]);
        let (code, err) = run(&args, &[]).await;
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(flag) && err.contains("0 is not in"), "{err}");
    }
    let (code, err) = run(&listen, &[("RUNSTATE_MAX_REQUEST_BYTES", "0")]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-request-bytes"), "{err}");
    let (code, err) = run(&listen, &[("GRAPH_CONNECTIONS", "65")]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--graph-connections"), "{err}");
}

#[tokio::test]
async fn an_invalid_rust_log_fails_startup_naming_it() {
    let (code, err) = run(
        &["--listen", "127.0.0.1:0", "--emulator"],
        &[("RUST_LOG", "info,runstate_gateway=loud")],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RUST_LOG"), "{err}");
    let (code, err) = run(
        &["emulator", "--listen", "127.0.0.1:0"],
        &[("RUST_LOG", "[")],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RUST_LOG"), "{err}");
}

#[tokio::test]
async fn an_invalid_worker_thread_count_fails_startup_naming_it() {
    for value in ["0", "many", "100000"] {
        let (code, err) = run(
            &["--listen", "127.0.0.1:0", "--emulator"],
            &[("TOKIO_WORKER_THREADS", value)],
        )
        .await;
        assert_eq!(code, 2, "{value}: {err}");
        assert!(err.contains("TOKIO_WORKER_THREADS"), "{value}: {err}");
    }
}

/// A refused configuration exits 2 with one plain line, never a backtrace.
#[tokio::test]
async fn refused_configurations_exit_2_with_one_line_and_no_backtrace() {
    // No log lines: stderr holds only what the refusal prints.
    let backtrace = [("RUST_BACKTRACE", "1"), ("RUST_LOG", "off")];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            &["--listen", "0.0.0.0:0", "--emulator"],
            &backtrace,
            "--allow-plaintext",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--graph-url",
                "http://graph.example/beta",
            ],
            &backtrace,
            "--allow-http-upstream",
        ),
        (
            &["--listen", "127.0.0.1:0", "--emulator"],
            &[("RUST_BACKTRACE", "1"), ("RUST_LOG", "=loud")],
            "RUST_LOG",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--graph-ca-file",
                "/nonexistent/ca.pem",
            ],
            &backtrace,
            "--graph-ca-file",
        ),
    ];
    for (args, envs, names) in cases {
        let (code, err) = run(args, envs).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error: "), "{err}");
        assert!(lines[0].contains(names), "{err}");
        assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    }
}

/// A failure that is not the configuration's (the port is taken) exits 1,
/// also in one line.
#[tokio::test]
async fn a_taken_port_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(
        &["--listen", &addr, "--emulator"],
        &[("RUST_BACKTRACE", "1"), ("RUST_LOG", "off")],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: cannot listen on"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}

#[tokio::test]
async fn help_explains_rust_log_and_env_twins() {
    let out = gateway(&["--help"], &[]).output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for text in [
        "RUST_LOG",
        "RUNSTATE_EMULATOR",
        "GRAPH_H2C",
        "RUNSTATE_LOG_FORMAT",
    ] {
        assert!(help.contains(text), "{text} missing from --help");
    }
}

/// `RUNSTATE_EMULATOR=true` starts the embedded emulator like `--emulator`.
#[tokio::test]
async fn the_emulator_flag_has_an_env_twin() {
    let mut child = gateway(
        &["--listen", "127.0.0.1:0"],
        // One worker: the current-thread runtime (other tests run the default).
        &[
            ("RUNSTATE_EMULATOR", "true"),
            ("RUST_LOG", "info"),
            ("TOKIO_WORKER_THREADS", "1"),
        ],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let found = line.contains("embedded Graph emulator started");
            seen.push(line);
            if found {
                return true;
            }
        }
        false
    })
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert_eq!(started, Ok(true), "{seen:?}");
}

/// `--state-store-outage` takes `serve-local` or `refuse`, from the flag or
/// its env twin, and names itself when given anything else.
#[tokio::test]
async fn the_state_store_outage_flag_and_its_env_twin_are_checked() {
    let listen = ["--listen", "127.0.0.1:0", "--emulator"];
    let mut args = listen.to_vec();
    args.extend(["--state-store-outage", "sometimes"]);
    let (code, err) = run(&args, &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--state-store-outage") && err.contains("refuse"),
        "{err}"
    );
    let (code, err) = run(&listen, &[("RUNSTATE_STATE_STORE_OUTAGE", "sometimes")]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--state-store-outage"), "{err}");

    let out = gateway(&["--help"], &[]).output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("RUNSTATE_STATE_STORE_OUTAGE"), "{help}");
    assert!(help.contains("serve-local"), "{help}");
}
