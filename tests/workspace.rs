//! The crates of the workspace and what they may depend on.
//!
//! The emulator is the gateway's test oracle: it must share none of the
//! gateway's code, or a bug there would be repeated in it and go unseen. It is
//! a crate of its own; the gateway embeds it only behind the `emulator`
//! feature, so a build without it carries no axum and no rcgen.

use serde_json::Value;

/// `cargo metadata` of the workspace, without resolving dependencies.
fn metadata() -> Value {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn package<'a>(meta: &'a Value, name: &str) -> &'a Value {
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no package {name} in the workspace"))
}

fn dependencies(package: &Value) -> &Vec<Value> {
    package["dependencies"].as_array().unwrap()
}

#[test]
fn the_emulator_depends_on_no_crate_of_the_workspace() {
    let meta = metadata();
    let emulator = package(&meta, "runstate-emulator");
    let ours: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(ours.contains(&"runstate-gateway"), "{ours:?}");
    for dep in dependencies(emulator) {
        let name = dep["name"].as_str().unwrap();
        assert!(
            !ours.contains(&name) && dep["path"].is_null(),
            "runstate-emulator depends on {name} ({} dependency)",
            dep["kind"].as_str().unwrap_or("normal")
        );
    }
}

#[test]
fn the_gateway_embeds_the_emulator_only_behind_its_feature() {
    let meta = metadata();
    let gateway = package(&meta, "runstate-gateway");
    let normal: Vec<&Value> = dependencies(gateway)
        .iter()
        .filter(|d| d["kind"].is_null())
        .collect();
    let emulator = normal
        .iter()
        .find(|d| d["name"] == "runstate-emulator")
        .expect("the gateway depends on runstate-emulator");
    assert_eq!(emulator["optional"], true);
    assert_eq!(
        gateway["features"]["emulator"],
        serde_json::json!(["dep:runstate-emulator"])
    );
    assert_eq!(
        gateway["features"]["default"],
        serde_json::json!(["emulator"])
    );
    for dep in &normal {
        let name = dep["name"].as_str().unwrap();
        assert!(!["axum", "rcgen", "time"].contains(&name), "{name}");
        if name == "tonic" {
            assert!(
                !dep["features"]
                    .as_array()
                    .unwrap()
                    .contains(&"router".into()),
                "tonic's router brings axum"
            );
        }
    }
}
