//! Micro-benchmarks of the pure translation functions: timestamps and enums
//! both ways, and the JSON encoding and decoding of each entity.
//!
//! `cargo bench --bench translate`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prost_types::Timestamp;
use runstate_gateway::{
    convert::{datetime, mask::Selection, resources::Resource, run_state},
    pb,
};

fn timestamps(c: &mut Criterion) {
    let ts = Timestamp {
        seconds: 1_483_257_778,
        nanos: 441_804_512,
    };
    c.bench_function("timestamp_to_graph", |b| {
        b.iter(|| datetime::timestamp_to_graph(black_box(&ts)))
    });
    for text in [
        "2017-01-01T08:02:58.4418045Z",
        "2017-01-01T00:02:58.441804512345-08:00",
    ] {
        c.bench_function(&format!("timestamp_from_graph {text}"), |b| {
            b.iter(|| datetime::timestamp_from_graph(black_box(text)))
        });
    }
}

fn enums(c: &mut Criterion) {
    c.bench_function("run_state_to_graph", |b| {
        b.iter(|| run_state::to_graph(black_box(pb::RunState::ScriptError)))
    });
    c.bench_function("run_state_from_graph", |b| {
        b.iter(|| run_state::from_graph(black_box("notApplicable")))
    });
}

fn user_state() -> pb::ScriptUserState {
    pb::ScriptUserState {
        user_principal_name: Some("user@contoso.com".into()),
        success_device_count: 2,
        error_device_count: 1,
        ..Default::default()
    }
}

fn device_state() -> pb::ScriptDeviceState {
    pb::ScriptDeviceState {
        run_state: pb::RunState::ScriptError as i32,
        result_message: Some("Result Message value".into()),
        last_state_update_date_time: Some(Timestamp {
            seconds: 1_483_257_778,
            nanos: 441_804_500,
        }),
        error_code: 9,
        error_description: Some("Error Description value".into()),
        ..Default::default()
    }
}

fn compliance_state() -> pb::ComplianceScriptDeviceState {
    let t = Some(Timestamp {
        seconds: 1_483_257_778,
        nanos: 441_804_500,
    });
    pb::ComplianceScriptDeviceState {
        detection_state: pb::RunState::Success as i32,
        last_state_update_date_time: t,
        expected_state_update_date_time: t,
        last_sync_date_time: t,
        script_output: Some("Script Output value".into()),
        script_error: None,
        ..Default::default()
    }
}

/// Encode (proto → Graph JSON bytes) and decode (Graph JSON → proto) of one entity.
fn entity<R: Resource>(c: &mut Criterion, label: &str, resource: R, answer: &str) {
    c.bench_function(&format!("encode {label}"), |b| {
        b.iter(|| {
            let body = black_box(resource.clone())
                .to_graph(&Selection::Create)
                .unwrap();
            serde_json::to_vec(&body).unwrap()
        })
    });
    c.bench_function(&format!("decode {label}"), |b| {
        b.iter(|| {
            let graph: R::Graph = serde_json::from_str(black_box(answer)).unwrap();
            R::from_graph(graph, String::from("n"))
        })
    });
}

fn entities(c: &mut Criterion) {
    entity(
        c,
        "user state",
        user_state(),
        r##"{"@odata.context":"https://graph.microsoft.com/beta/$metadata#x/$entity","@odata.type":"#microsoft.graph.deviceManagementScriptUserState","id":"d5a29103-9103-d5a2-0391-a2d50391a2d5","successDeviceCount":2,"errorDeviceCount":0,"userPrincipalName":"User Principal Name value"}"##,
    );
    entity(
        c,
        "device state",
        device_state(),
        r##"{"@odata.type":"#microsoft.graph.deviceManagementScriptDeviceState","id":"39440cba-0cba-3944-ba0c-4439ba0c4439","runState":"success","resultMessage":"Result Message value","lastStateUpdateDateTime":"2017-01-01T00:02:58.4418045-08:00","errorCode":9,"errorDescription":"Error Description value"}"##,
    );
    entity(
        c,
        "compliance state",
        compliance_state(),
        r##"{"@odata.type":"#microsoft.graph.deviceComplianceScriptDeviceState","id":"7bd39c86-9c86-7bd3-869c-d37b869cd37b","detectionState":"success","lastStateUpdateDateTime":"2017-01-01T00:02:58.4418045-08:00","expectedStateUpdateDateTime":"2016-12-31T23:58:26.9294641-08:00","lastSyncDateTime":"2017-01-01T00:02:49.3205976-08:00","scriptOutput":"Script Output value","scriptError":"Script Error value"}"##,
    );
}

criterion_group!(benches, timestamps, enums, entities);
criterion_main!(benches);
