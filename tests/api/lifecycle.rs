//! List and Delete: paging, sealed page tokens, filters, read masks,
//! NOT_FOUND and allow_missing.

use runstate_gateway::{
    convert::page_token::{Binding, PageTokens},
    pb::{
        ComplianceScriptDeviceState, CreateComplianceScriptDeviceStateRequest,
        CreateScriptDeviceStateRequest, CreateScriptUserStateRequest,
        DeleteComplianceScriptDeviceStateRequest, DeleteScriptDeviceStateRequest,
        DeleteScriptUserStateRequest, GetComplianceScriptDeviceStateRequest,
        GetScriptDeviceStateRequest, GetScriptUserStateRequest,
        ListComplianceScriptDeviceStatesRequest, ListScriptDeviceStatesRequest,
        ListScriptUserStatesRequest, RunState, ScriptDeviceState, ScriptUserState,
    },
};
use tonic::Code;

use crate::helpers::{TestApp, assert_violation, mask, spawn_app, spawn_app_with};

const KEY: &str = "test-page-token-key";

async fn device_state(app: &mut TestApp, parent: &str, run_state: RunState) -> ScriptDeviceState {
    app.client
        .create_script_device_state(CreateScriptDeviceStateRequest {
            parent: parent.into(),
            script_device_state: Some(ScriptDeviceState {
                run_state: run_state as i32,
                error_code: 3,
                result_message: Some("out".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn user_state(app: &mut TestApp, script: &str, upn: &str) -> ScriptUserState {
    app.client
        .create_script_user_state(CreateScriptUserStateRequest {
            parent: script.into(),
            script_user_state: Some(ScriptUserState {
                user_principal_name: Some(upn.into()),
                success_device_count: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn list(parent: &str, page_size: i32, page_token: &str) -> ListScriptDeviceStatesRequest {
    ListScriptDeviceStatesRequest {
        parent: parent.into(),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn delete_then_get_is_not_found_and_allow_missing_is_ok() {
    let mut app = spawn_app().await;
    let user = user_state(&mut app, "deviceShellScripts/s1", "a@example.com").await;
    let device = device_state(&mut app, &user.name, RunState::Success).await;
    let compliance = app
        .client
        .create_compliance_script_device_state(CreateComplianceScriptDeviceStateRequest {
            parent: "deviceComplianceScripts/c1".into(),
            compliance_script_device_state: Some(ComplianceScriptDeviceState::default()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.graph.clear_requests();

    app.client
        .delete_script_device_state(DeleteScriptDeviceStateRequest {
            name: device.name.clone(),
            allow_missing: false,
        })
        .await
        .unwrap();
    let sent = app.requests().pop().unwrap();
    assert_eq!(sent.method, "DELETE");
    assert_eq!(sent.path, format!("/beta/deviceManagement/{}", device.name));
    let err = app
        .client
        .get_script_device_state(GetScriptDeviceStateRequest {
            name: device.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Deleting again: NOT_FOUND, or OK with allow_missing.
    let err = app
        .client
        .delete_script_device_state(DeleteScriptDeviceStateRequest {
            name: device.name.clone(),
            allow_missing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    app.client
        .delete_script_device_state(DeleteScriptDeviceStateRequest {
            name: device.name.clone(),
            allow_missing: true,
        })
        .await
        .unwrap();

    app.client
        .delete_script_user_state(DeleteScriptUserStateRequest {
            name: user.name.clone(),
            allow_missing: false,
        })
        .await
        .unwrap();
    let err = app
        .client
        .get_script_user_state(GetScriptUserStateRequest {
            name: user.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    app.client
        .delete_compliance_script_device_state(DeleteComplianceScriptDeviceStateRequest {
            name: compliance.name.clone(),
            allow_missing: false,
        })
        .await
        .unwrap();
    let err = app
        .client
        .get_compliance_script_device_state(GetComplianceScriptDeviceStateRequest {
            name: compliance.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .client
        .delete_compliance_script_device_state(DeleteComplianceScriptDeviceStateRequest {
            name: compliance.name,
            allow_missing: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn hostile_names_and_parents_never_reach_graph() {
    let mut app = spawn_app().await;
    let hostile = [
        "",
        "deviceManagementScripts/s/deviceRunStates/../../x",
        "deviceManagementScripts/s/deviceRunStates/a%2Fb",
        "deviceManagementScripts/s/deviceRunStates/a?b=c",
        "deviceManagementScripts/s/deviceRunStates/a#b",
        "https://evil.example/beta/deviceManagement/deviceManagementScripts/s",
        "deviceHealthScripts/s/deviceRunStates/d",
        "deviceManagementScripts/s/deviceRunStates/d/extra",
    ];
    for name in hostile {
        let err = app
            .client
            .delete_script_device_state(DeleteScriptDeviceStateRequest {
                name: name.into(),
                allow_missing: true,
            })
            .await
            .unwrap_err();
        assert_violation(&err, "name");
        let err = app
            .client
            .delete_script_user_state(DeleteScriptUserStateRequest {
                name: name.into(),
                allow_missing: false,
            })
            .await
            .unwrap_err();
        assert_violation(&err, "name");
        let err = app
            .client
            .delete_compliance_script_device_state(DeleteComplianceScriptDeviceStateRequest {
                name: name.into(),
                allow_missing: false,
            })
            .await
            .unwrap_err();
        assert_violation(&err, "name");
        let err = app
            .client
            .list_script_device_states(list(name, 0, ""))
            .await
            .unwrap_err();
        assert_violation(&err, "parent");
        let err = app
            .client
            .list_script_user_states(ListScriptUserStatesRequest {
                parent: name.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_violation(&err, "parent");
        let err = app
            .client
            .list_compliance_script_device_states(ListComplianceScriptDeviceStatesRequest {
                parent: name.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_violation(&err, "parent");
    }
    assert_eq!(app.graph.request_count(), 0);
}

#[tokio::test]
async fn lists_every_parent_shape_with_top_filter_and_select() {
    let mut app = spawn_app().await;
    let user = user_state(&mut app, "deviceManagementScripts/s1", "o'neil@example.com").await;
    user_state(&mut app, "deviceManagementScripts/s1", "b@example.com").await;
    let a = device_state(&mut app, "deviceManagementScripts/s1", RunState::Success).await;
    let b = device_state(
        &mut app,
        "deviceManagementScripts/s1",
        RunState::ScriptError,
    )
    .await;
    let c = device_state(&mut app, &user.name, RunState::ScriptError).await;
    app.graph.clear_requests();

    // Under the script: both, named under the script.
    let page = app
        .client
        .list_script_device_states(list("deviceManagementScripts/s1", 0, ""))
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<_> = page
        .script_device_states
        .iter()
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    let mut want = vec![a.name.clone(), b.name.clone()];
    want.sort();
    assert_eq!(names, want);
    assert!(page.next_page_token.is_empty());
    let sent = app.requests().pop().unwrap();
    assert_eq!(
        sent.path,
        "/beta/deviceManagement/deviceManagementScripts/s1/deviceRunStates?$top=100"
    );

    // Under the user state, filtered and selected; page_size clamped.
    let page = app
        .client
        .list_script_device_states(ListScriptDeviceStatesRequest {
            parent: user.name.clone(),
            page_size: 5000,
            filter: "run_state = RUN_STATE_SCRIPT_ERROR".into(),
            read_mask: mask(&["run_state"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.script_device_states.len(), 1);
    let got = &page.script_device_states[0];
    assert_eq!(got.name, c.name);
    assert_eq!(got.run_state, RunState::ScriptError as i32);
    let sent = app.requests().pop().unwrap();
    assert_eq!(
        sent.path,
        format!(
            "/beta/deviceManagement/{}/deviceRunStates?$top=999&$filter=runState%20eq%20%27scriptError%27&$select=id,runState",
            user.name
        )
    );

    // User states: unfiltered, then filtered by user principal name (quotes
    // escaped; the emulator filters on enums only, so only the wire is checked).
    let page = app
        .client
        .list_script_user_states(ListScriptUserStatesRequest {
            parent: "deviceManagementScripts/s1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.script_user_states.len(), 2);
    assert!(page.script_user_states.iter().any(|u| u.name == user.name));
    let _ = app
        .client
        .list_script_user_states(ListScriptUserStatesRequest {
            parent: "deviceManagementScripts/s1".into(),
            filter: "user_principal_name = \"o'neil@example.com\"".into(),
            ..Default::default()
        })
        .await;
    let sent = app.requests().pop().unwrap();
    assert!(
        sent.path
            .ends_with("$filter=userPrincipalName%20eq%20%27o%27%27neil%40example.com%27"),
        "{}",
        sent.path
    );

    // Compliance states by detection state.
    app.client
        .list_compliance_script_device_states(ListComplianceScriptDeviceStatesRequest {
            parent: "deviceComplianceScripts/c1".into(),
            page_size: 7,
            filter: "detection_state = RUN_STATE_FAIL".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sent = app.requests().pop().unwrap();
    assert_eq!(
        sent.path,
        "/beta/deviceManagement/deviceComplianceScripts/c1/deviceRunStates?$top=7&$filter=detectionState%20eq%20%27fail%27"
    );
}

#[tokio::test]
async fn bad_list_arguments_are_invalid_and_never_sent() {
    let mut app = spawn_app().await;
    let cases: Vec<(ListScriptDeviceStatesRequest, &str)> = vec![
        (list("deviceManagementScripts/s1", -1, ""), "page_size"),
        (
            ListScriptDeviceStatesRequest {
                filter: "run_state = RUN_STATE_FAIL OR run_state = RUN_STATE_SUCCESS".into(),
                ..list("deviceManagementScripts/s1", 0, "")
            },
            "filter",
        ),
        (
            ListScriptDeviceStatesRequest {
                filter: "error_code = 1".into(),
                ..list("deviceManagementScripts/s1", 0, "")
            },
            "filter",
        ),
        (
            ListScriptDeviceStatesRequest {
                filter: "run_state = 'fail') or (1 eq 1".into(),
                ..list("deviceManagementScripts/s1", 0, "")
            },
            "filter",
        ),
        (
            ListScriptDeviceStatesRequest {
                read_mask: mask(&["managedDevice"]),
                ..list("deviceManagementScripts/s1", 0, "")
            },
            "read_mask",
        ),
    ];
    for (req, field) in cases {
        let err = app.client.list_script_device_states(req).await.unwrap_err();
        assert_violation(&err, field);
    }
    assert_eq!(app.graph.request_count(), 0);
}

/// A token sealed with the gateway's configured key for another query.
fn sealed(collection: &str, graph_url: &str, query: &str) -> String {
    let binding = Binding {
        rpc: "ListScriptDeviceStates",
        collection,
        filter: "",
        select: "",
    };
    let root = format!("{graph_url}/deviceManagement/");
    PageTokens::from_secret(KEY)
        .seal(&binding, &format!("{root}{collection}?{query}"), &root)
        .unwrap()
}

#[tokio::test]
async fn forged_truncated_and_foreign_page_tokens_are_refused_without_upstream_calls() {
    let mut app = spawn_app_with(&["--graph-token", "t", "--page-token-key", KEY]).await;
    let parent = "deviceManagementScripts/s1";
    let good = sealed(
        "deviceManagementScripts/s1/deviceRunStates",
        &app.graph_url,
        "$skiptoken=2",
    );
    let foreign_collection = sealed(
        "deviceShellScripts/s1/deviceRunStates",
        &app.graph_url,
        "$skiptoken=2",
    );
    // Sealed by another gateway (another key) for a Graph on another host.
    let foreign_host = PageTokens::random()
        .unwrap()
        .seal(
            &Binding {
                rpc: "ListScriptDeviceStates",
                collection: "deviceManagementScripts/s1/deviceRunStates",
                filter: "",
                select: "",
            },
            "https://evil.example/beta/deviceManagement/deviceManagementScripts/s1/deviceRunStates?$skiptoken=2",
            "https://evil.example/beta/deviceManagement/",
        )
        .unwrap();
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let bad = [
        "garbage!".to_owned(),
        good[..good.len() / 2].to_owned(),
        String::from_utf8(flipped).unwrap(),
        foreign_collection,
        foreign_host,
        "A".repeat(10_000),
    ];
    app.graph.clear_requests();
    for token in &bad {
        let err = app
            .client
            .list_script_device_states(list(parent, 0, token))
            .await
            .unwrap_err();
        assert_violation(&err, "page_token");
    }
    // The same token with another filter is refused too.
    let err = app
        .client
        .list_script_device_states(ListScriptDeviceStatesRequest {
            filter: "run_state = RUN_STATE_FAIL".into(),
            ..list(parent, 0, &good)
        })
        .await
        .unwrap_err();
    assert_violation(&err, "page_token");
    assert_eq!(app.graph.request_count(), 0, "{:?}", app.requests());

    // The good one is used, on the caller's own collection.
    app.client
        .list_script_device_states(list(parent, 3, &good))
        .await
        .ok();
    let sent = app.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].path,
        "/beta/deviceManagement/deviceManagementScripts/s1/deviceRunStates?$skiptoken=2&$top=3"
    );
}

#[tokio::test]
async fn lists_through_three_pages_with_top_and_the_filter_kept() {
    let mut app = spawn_app().await;
    let parent = "deviceCustomAttributeShellScripts/s7";
    let mut want = Vec::new();
    for i in 0..10 {
        let state = if i % 4 == 3 {
            RunState::Success
        } else {
            RunState::Fail
        };
        let s = device_state(&mut app, parent, state).await;
        if state == RunState::Fail {
            want.push(s.name);
        }
    }
    app.graph.clear_requests();
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client
            .list_script_device_states(ListScriptDeviceStatesRequest {
                parent: parent.into(),
                page_size: 3,
                page_token: token,
                filter: "run_state = RUN_STATE_FAIL".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.script_device_states.len() <= 3);
        assert!(
            page.script_device_states
                .iter()
                .all(|s| s.run_state == RunState::Fail as i32)
        );
        got.extend(page.script_device_states.into_iter().map(|s| s.name));
        token = page.next_page_token;
        if token.is_empty() || pages > 10 {
            break;
        }
        assert!(!token.contains("skiptoken"), "the token is opaque");
    }
    assert_eq!(pages, 3, "7 states in pages of 3");
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let sent = app.requests();
    assert_eq!(sent.len(), 3);
    for r in &sent {
        assert!(r.path.contains("$top=3"), "{}", r.path);
        assert!(
            r.path
                .starts_with(&format!("/beta/deviceManagement/{parent}/deviceRunStates?")),
            "{}",
            r.path
        );
    }
    assert!(sent[1].path.contains("skiptoken"), "{}", sent[1].path);
}
