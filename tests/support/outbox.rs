//! What the outbox tests that drive the real binary share: the writes they
//! submit (one create per error code under one parent) and how they read
//! the emulator back.

use std::collections::HashMap;

use prost::Message;
use runstate_gateway::pb::{
    CreateScriptDeviceStateRequest, RunState, RunStateWrite, ScriptDeviceState,
    SubmitRunStatesMetadata, longrunning::Operation, run_state_write::Write,
};

use super::binary::Gateway;

pub const PARENT: &str = "deviceManagementScripts/s1";

/// Write `n`: a create whose request id and error code are both `n`.
pub fn write(n: u32) -> RunStateWrite {
    RunStateWrite {
        request_id: format!("00000000-0000-4000-8000-{n:012}"),
        write: Some(Write::CreateScriptDeviceState(
            CreateScriptDeviceStateRequest {
                parent: PARENT.into(),
                script_device_state: Some(ScriptDeviceState {
                    run_state: RunState::Success as i32,
                    error_code: n as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

pub fn metadata(op: &Operation) -> SubmitRunStatesMetadata {
    SubmitRunStatesMetadata::decode(op.metadata.as_ref().unwrap().value.as_slice()).unwrap()
}

/// A JSON answer of the emulator's control API (`path` under its root).
pub async fn emulator_json(emulator: &Gateway, path: &str) -> serde_json::Value {
    let root = emulator.emulator_url.trim_end_matches("/beta");
    let text = reqwest::get(format!("{root}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The states Graph holds under the parent, by error code.
pub async fn stored(emulator: &Gateway) -> HashMap<i64, usize> {
    let mut out = HashMap::new();
    let mut url = format!(
        "{}/deviceManagement/{PARENT}/deviceRunStates",
        emulator.emulator_url
    );
    loop {
        let text = reqwest::Client::new()
            .get(&url)
            .bearer_auth("t")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let page: serde_json::Value = serde_json::from_str(&text).unwrap();
        for s in page["value"].as_array().into_iter().flatten() {
            *out.entry(s["errorCode"].as_i64().unwrap()).or_default() += 1;
        }
        match page["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => return out,
        }
    }
}
