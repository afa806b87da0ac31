//! Load program of the outbox benchmark (`bench/outbox.py`).
//!
//! - `submit TARGET N FIRST`: one `SubmitRunStates` of `N` device-state
//!   creates (request ids numbered from `FIRST`); prints
//!   `{"ms": …, "name": "operations/…"}`, the call's time from send to answer.
//! - `wait TARGET NAME`: waits (WaitOperation, 30 s at a time) until the
//!   operation is done; prints `{"ms": …, "delivered": …, "failed": …}`.
//! - `first TARGET NAME`: waits until the operation has delivered a write;
//!   prints `{"ms": …}`.

use std::time::{Duration, Instant};

use prost::Message;
use runstate_gateway::pb::{
    self,
    longrunning::{GetOperationRequest, WaitOperationRequest, operations_client::OperationsClient},
    run_state_service_client::RunStateServiceClient,
    run_state_write::Write,
};

const PARENT: &str = "deviceManagementScripts/bench";

fn write(n: u64) -> pb::RunStateWrite {
    pb::RunStateWrite {
        request_id: format!("00000000-0000-4000-8000-{n:012}"),
        write: Some(Write::CreateScriptDeviceState(
            pb::CreateScriptDeviceStateRequest {
                parent: PARENT.into(),
                script_device_state: Some(pb::ScriptDeviceState {
                    run_state: pb::RunState::Success as i32,
                    error_code: (n % 1000) as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

fn metadata(op: &pb::longrunning::Operation) -> pb::SubmitRunStatesMetadata {
    op.metadata
        .as_ref()
        .and_then(|a| pb::SubmitRunStatesMetadata::decode(a.value.as_slice()).ok())
        .unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(target)) = (args.first(), args.get(1)) else {
        return Err("usage: bench_outbox submit|wait|first TARGET …".into());
    };
    let started = Instant::now();
    match cmd.as_str() {
        "submit" => {
            let n: u64 = args.get(2).ok_or("N")?.parse()?;
            let first: u64 = args.get(3).ok_or("FIRST")?.parse()?;
            let writes: Vec<_> = (first..first + n).map(write).collect();
            let mut client = RunStateServiceClient::connect(target.clone())
                .await?
                .max_encoding_message_size(64 << 20);
            let request = pb::SubmitRunStatesRequest { writes };
            let sent = Instant::now();
            let op = client.submit_run_states(request).await?.into_inner();
            println!(
                "{{\"ms\": {:.1}, \"name\": \"{}\"}}",
                sent.elapsed().as_secs_f64() * 1000.0,
                op.name
            );
        }
        "wait" | "first" => {
            let name = args.get(2).ok_or("NAME")?.clone();
            let mut ops = OperationsClient::connect(target.clone()).await?;
            loop {
                let op = if cmd == "wait" {
                    ops.wait_operation(WaitOperationRequest {
                        name: name.clone(),
                        timeout: Some(prost_types::Duration {
                            seconds: 30,
                            nanos: 0,
                        }),
                    })
                    .await?
                    .into_inner()
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ops.get_operation(GetOperationRequest { name: name.clone() })
                        .await?
                        .into_inner()
                };
                let m = metadata(&op);
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                if cmd == "first" && m.delivered_count > 0 {
                    println!("{{\"ms\": {ms:.1}}}");
                    break;
                }
                if op.done {
                    println!(
                        "{{\"ms\": {ms:.1}, \"delivered\": {}, \"failed\": {}}}",
                        m.delivered_count, m.failed_count
                    );
                    break;
                }
            }
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    Ok(())
}
