use runstate_gateway::pb::{
    CreateScriptUserStateRequest, GetScriptUserStateRequest, ScriptUserState,
    UpdateScriptUserStateRequest,
};
use serde_json::json;
use tonic::Code;

use crate::helpers::{mask, spawn_app};

const KINDS: [&str; 3] = [
    "deviceManagementScripts",
    "deviceShellScripts",
    "deviceCustomAttributeShellScripts",
];

fn create_request(parent: &str) -> CreateScriptUserStateRequest {
    CreateScriptUserStateRequest {
        parent: parent.into(),
        script_user_state: Some(ScriptUserState {
            user_principal_name: Some("user@contoso.com".into()),
            success_device_count: 2,
            error_device_count: 0,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn creates_on_every_script_kind_and_sends_graphs_body() {
    let mut app = spawn_app().await;
    for kind in KINDS {
        let parent = format!("{kind}/script-1");
        let created = app
            .client
            .create_script_user_state(create_request(&parent))
            .await
            .unwrap();
        assert!(created.metadata().get("graph-request-id").is_some());
        let state = created.into_inner();
        assert_eq!(state.name, format!("{parent}/userRunStates/{}", state.id));
        assert_eq!(state.id.len(), 36, "a GUID: {}", state.id);
        assert_eq!(
            state.user_principal_name.as_deref(),
            Some("user@contoso.com")
        );
        assert_eq!(state.success_device_count, 2);

        let sent = app.requests().pop().unwrap();
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.version, "HTTP/1.1", "plain http without --graph-h2c");
        assert_eq!(
            sent.path,
            format!("/beta/deviceManagement/{kind}/script-1/userRunStates")
        );
        assert_eq!(
            sent.json(),
            json!({"@odata.type": "#microsoft.graph.deviceManagementScriptUserState",
                   "successDeviceCount": 2, "errorDeviceCount": 0, "userPrincipalName": "user@contoso.com"})
        );
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert!(uuid::Uuid::try_parse(sent.header("client-request-id").unwrap()).is_ok());

        let got = app
            .client
            .get_script_user_state(GetScriptUserStateRequest {
                name: state.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got, state);
    }
}

#[tokio::test]
async fn unset_optional_fields_are_omitted_on_create() {
    let mut app = spawn_app().await;
    let req = CreateScriptUserStateRequest {
        parent: "deviceShellScripts/s".into(),
        script_user_state: Some(ScriptUserState::default()),
        ..Default::default()
    };
    let state = app
        .client
        .create_script_user_state(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.user_principal_name, None);
    assert_eq!(
        app.requests()[0].json(),
        json!({"@odata.type": "#microsoft.graph.deviceManagementScriptUserState", "successDeviceCount": 0, "errorDeviceCount": 0})
    );
}

#[tokio::test]
async fn caller_can_choose_the_id() {
    let mut app = spawn_app().await;
    let mut req = create_request("deviceManagementScripts/s");
    req.script_user_state_id = "user:42@contoso".into();
    let state = app
        .client
        .create_script_user_state(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state.name,
        "deviceManagementScripts/s/userRunStates/user:42@contoso"
    );
    assert_eq!(app.requests()[0].json()["id"], "user:42@contoso");
    // The same id with other content is a conflict on create...
    let mut other = req.clone();
    other
        .script_user_state
        .as_mut()
        .unwrap()
        .success_device_count += 1;
    let err = app
        .client
        .create_script_user_state(other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // ...while the very same create finds its own entity.
    let again = app.client.create_script_user_state(req).await.unwrap();
    assert_eq!(again.into_inner(), state);
}

async fn created(app: &mut crate::helpers::TestApp) -> ScriptUserState {
    app.client
        .create_script_user_state(create_request("deviceShellScripts/s"))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn update_sends_only_masked_fields_and_nulls() {
    for no_content in [false, true] {
        let mut app = spawn_app().await;
        app.graph.set_patch_no_content(no_content);
        let state = created(&mut app).await;
        let req = UpdateScriptUserStateRequest {
            script_user_state: Some(ScriptUserState {
                name: state.name.clone(),
                error_device_count: 5,
                success_device_count: 99,
                user_principal_name: None,
                ..Default::default()
            }),
            update_mask: mask(&["error_device_count", "userPrincipalName"]),
        };
        let updated = app.client.update_script_user_state(req).await.unwrap();
        assert!(updated.metadata().get("graph-request-id").is_some());
        let updated = updated.into_inner();
        assert_eq!(updated.name, state.name);
        assert_eq!(updated.id, state.id);
        assert_eq!(updated.error_device_count, 5);
        assert_eq!(updated.success_device_count, 2, "not in the mask");
        assert_eq!(updated.user_principal_name, None);

        let requests = app.requests();
        let patch = &requests[1];
        assert_eq!(patch.method, "PATCH");
        assert_eq!(patch.path, format!("/beta/deviceManagement/{}", state.name));
        assert_eq!(
            patch.json(),
            json!({"errorDeviceCount": 5, "userPrincipalName": null})
        );
        // After a 204 the gateway reads the stored state back.
        let methods: Vec<_> = requests.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(
            methods,
            if no_content {
                vec!["POST", "PATCH", "GET"]
            } else {
                vec!["POST", "PATCH"]
            }
        );
    }
}

#[tokio::test]
async fn omitted_mask_sends_populated_fields_and_star_sends_all() {
    let mut app = spawn_app().await;
    let state = created(&mut app).await;
    let update = |mask| UpdateScriptUserStateRequest {
        script_user_state: Some(ScriptUserState {
            name: state.name.clone(),
            error_device_count: 3,
            ..Default::default()
        }),
        update_mask: mask,
    };
    app.client
        .update_script_user_state(update(None))
        .await
        .unwrap();
    assert_eq!(app.requests()[1].json(), json!({"errorDeviceCount": 3}));
    let all = app
        .client
        .update_script_user_state(update(mask(&["*"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        app.requests()[2].json(),
        json!({"userPrincipalName": null, "successDeviceCount": 0, "errorDeviceCount": 3})
    );
    assert_eq!(
        (
            all.success_device_count,
            all.error_device_count,
            all.user_principal_name
        ),
        (0, 3, None)
    );
}

#[tokio::test]
async fn bad_masks_never_reach_graph() {
    let mut app = spawn_app().await;
    let state = created(&mut app).await;
    for paths in [
        vec!["id"],
        vec!["name"],
        vec!["nope"],
        vec!["run_state"],
        vec!["*", "id"],
    ] {
        let req = UpdateScriptUserStateRequest {
            script_user_state: Some(ScriptUserState {
                name: state.name.clone(),
                ..Default::default()
            }),
            update_mask: mask(&paths),
        };
        let err = app.client.update_script_user_state(req).await.unwrap_err();
        crate::helpers::assert_violation(&err, "update_mask");
    }
    assert_eq!(
        app.graph.request_count(),
        1,
        "only the create reached Graph"
    );
}

#[tokio::test]
async fn updating_a_missing_state_is_not_found() {
    let mut app = spawn_app().await;
    let req = UpdateScriptUserStateRequest {
        script_user_state: Some(ScriptUserState {
            name: "deviceShellScripts/s/userRunStates/missing".into(),
            error_device_count: 1,
            ..Default::default()
        }),
        update_mask: None,
    };
    let err = app.client.update_script_user_state(req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.metadata().get("graph-request-id").is_some());
}

#[tokio::test]
async fn an_applied_update_that_cannot_be_read_back_says_so() {
    let mut app = spawn_app().await;
    let state = created(&mut app).await;
    app.graph.set_patch_no_content(true);
    app.graph
        .inject(runstate_emulator::Fault::unserved_route("GET"));
    let req = UpdateScriptUserStateRequest {
        script_user_state: Some(ScriptUserState {
            name: state.name,
            error_device_count: 7,
            ..Default::default()
        }),
        update_mask: None,
    };
    let err = app.client.update_script_user_state(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message()
            .starts_with("the update was applied, but reading it back"),
        "{}",
        err.message()
    );
}
