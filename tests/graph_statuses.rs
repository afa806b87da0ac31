//! Graph statuses outside the status table, injected with the emulator's
//! fault API into the real binary: each gets a gRPC code by its class, and
//! none grows the metrics' label sets.

#[allow(dead_code)]
#[path = "support/binary.rs"]
mod binary;

use std::collections::BTreeSet;

use runstate_gateway::pb::{
    CreateScriptUserStateRequest, GetScriptUserStateRequest, ScriptUserState,
    run_state_service_client::RunStateServiceClient,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use binary::{Gateway, spawn};

fn create() -> CreateScriptUserStateRequest {
    CreateScriptUserStateRequest {
        parent: "deviceShellScripts/s".into(),
        script_user_state: Some(ScriptUserState::default()),
        ..Default::default()
    }
}

fn get() -> GetScriptUserStateRequest {
    GetScriptUserStateRequest {
        name: "deviceShellScripts/s/userRunStates/u".into(),
    }
}

async fn client(gw: &Gateway) -> RunStateServiceClient<Channel> {
    RunStateServiceClient::connect(gw.endpoint()).await.unwrap()
}

/// The next `method` request to a user state answers `status`, once.
async fn fault(gw: &Gateway, method: &str, status: u16) {
    gw.emulator_fault(serde_json::json!({
        "method": method,
        "path_contains": "userRunStates",
        "status": status,
        "message": format!("graph says {status}"),
        "times": 1,
    }))
    .await;
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn unmapped_statuses_map_by_class() {
    let gw = spawn(&[]);
    let mut c = client(&gw).await;

    // Headers too large: the caller's to fix, and the message says so.
    fault(&gw, "GET", 431).await;
    let s = c.get_script_user_state(get()).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("headers") && s.message().contains("431"),
        "{s:?}"
    );
    assert!(s.message().contains("graph says 431"), "{s:?}");

    // Insufficient storage.
    for method in ["GET", "POST"] {
        fault(&gw, method, 507).await;
        let s = if method == "GET" {
            c.get_script_user_state(get()).await.unwrap_err()
        } else {
            c.create_script_user_state(create()).await.unwrap_err()
        };
        assert_eq!(s.code(), Code::ResourceExhausted, "{method}: {s:?}");
        assert_eq!(reason(&s), "HTTP_507", "{method}: {s:?}");
    }

    // Other server errors: a read is unavailable...
    for status in [505, 508, 599] {
        fault(&gw, "GET", status).await;
        let s = c.get_script_user_state(get()).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "{status}: {s:?}");
        assert_eq!(reason(&s), format!("HTTP_{status}"), "{s:?}");
    }
    // ...and a create may have been applied.
    for status in [505, 599] {
        fault(&gw, "POST", status).await;
        let s = c.create_script_user_state(create()).await.unwrap_err();
        assert_eq!(s.code(), Code::Unknown, "{status}: {s:?}");
        assert_eq!(reason(&s), "OUTCOME_UNKNOWN", "{status}: {s:?}");
        assert!(s.message().contains("may have been applied"), "{s:?}");
    }

    // Other client errors: Graph refuses for a state of its own.
    for (method, status) in [("GET", 410), ("GET", 418), ("POST", 422), ("POST", 451)] {
        fault(&gw, method, status).await;
        let s = if method == "GET" {
            c.get_script_user_state(get()).await.unwrap_err()
        } else {
            c.create_script_user_state(create()).await.unwrap_err()
        };
        assert_eq!(s.code(), Code::FailedPrecondition, "{status}: {s:?}");
        assert_eq!(s.message(), format!("graph says {status}"));
    }
}

/// The `status` label values of the Graph request series.
fn graph_status_labels(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("runstate_graph_request"))
        .filter_map(|l| {
            let start = l.find("status=\"")? + "status=\"".len();
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn two_hundred_statuses_leave_the_metrics_bounded() {
    let gw = spawn(&["--admin-listen", "127.0.0.1:0"]);
    let mut c = client(&gw).await;
    let metrics = async || {
        reqwest::get(format!("http://{}/metrics", gw.admin.unwrap()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    for status in 400..600u16 {
        fault(&gw, "GET", status).await;
        // Some are retried (429, 503, 504), then found missing.
        let _ = c.get_script_user_state(get()).await;
    }
    let text = metrics().await;
    let labels = graph_status_labels(&text);
    assert!(
        labels.contains("404") && labels.contains("429"),
        "{labels:?}"
    );
    assert!(
        labels.contains("4xx") && labels.contains("5xx"),
        "{labels:?}"
    );
    for bucketed in ["431", "451", "507", "599"] {
        assert!(!labels.contains(bucketed), "{bucketed} in {labels:?}");
    }
    assert!(
        labels.len() <= 25,
        "{} status labels: {labels:?}",
        labels.len()
    );
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series <= 1_000, "{series} series");
}
