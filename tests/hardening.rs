//! Attacks from issue 11, each bounded in count and time, on loopback,
//! against the real binary (raw HTTP/2 with the `h2` crate): stalled
//! streams, slow readers, silent connections, malformed and oversized
//! messages; and bodies Graph would refuse as too large.

#[allow(dead_code)]
#[path = "support/binary.rs"]
mod binary;
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use runstate_emulator::Fault;
use runstate_gateway::pb::{
    CreateScriptDeviceStateRequest, GetScriptDeviceStateRequest, ScriptDeviceState,
    UpdateScriptDeviceStateRequest, run_state_service_client::RunStateServiceClient,
};
use tokio::{io::AsyncReadExt, net::TcpStream, time::timeout};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use binary::{Gateway, spawn};

const API: &str = "/intune.runstates.v1.RunStateService/";

/// A raw HTTP/2 connection; `window` is the stream receive window it advertises.
async fn raw(addr: SocketAddr, window: u32) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // One call answered in headers alone (an invalid name), so the server's
    // SETTINGS (its stream limit) are known before the attack starts.
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send
        .send_request(grpc_request(addr, "GetScriptDeviceState"), false)
        .unwrap();
    let bad = GetScriptDeviceStateRequest { name: "bad".into() };
    stream
        .send_data(framed(&bad.encode_to_vec()), true)
        .unwrap();
    let (code, _) = grpc_status(response, Duration::from_secs(10))
        .await
        .expect("the warm-up call is answered");
    assert_eq!(code, Code::InvalidArgument as i32);
    send
}

fn grpc_request(addr: SocketAddr, rpc: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{API}{rpc}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A gRPC length-prefixed message.
fn framed(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + 5);
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// The gRPC status of a response: from its headers (trailers-only) or trailers.
async fn grpc_status(
    response: h2::client::ResponseFuture,
    limit: Duration,
) -> Option<(i32, String)> {
    let response = timeout(limit, response).await.ok()?.ok()?;
    let read = |h: &http::HeaderMap| {
        let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = h
            .get("grpc-message")
            .map(|v| {
                percent_encoding::percent_decode(v.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        Some((code, message))
    };
    if let Some(status) = read(response.headers()) {
        return Some(status);
    }
    let mut body = response.into_body();
    while let Some(chunk) = timeout(limit, body.data()).await.ok()? {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = timeout(limit, body.trailers()).await.ok()?.ok()??;
    read(&trailers)
}

async fn health(addr: SocketAddr) -> Result<ServingStatus, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    Ok(r.into_inner().status())
}

fn create_device_state(result_message: String) -> CreateScriptDeviceStateRequest {
    CreateScriptDeviceStateRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState {
            result_message: Some(result_message),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn client(gw: &Gateway) -> RunStateServiceClient<tonic::transport::Channel> {
    RunStateServiceClient::connect(gw.endpoint()).await.unwrap()
}

/// Issue 11, item 1: streams that send headers and then nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_neither_hold_call_slots_nor_exceed_the_stream_limit() {
    let gw = spawn(&[
        "--max-concurrent-requests",
        "20",
        "--request-read-timeout",
        "2s",
    ]);
    let mut send = raw(gw.addr, 65_535).await;
    let mut stalled = Vec::new();
    for _ in 0..300 {
        match timeout(Duration::from_millis(500), send.clone().ready()).await {
            Ok(Ok(ready)) => send = ready,
            _ => break,
        }
        // Headers, and a body that never comes.
        let (response, stream) = send
            .send_request(grpc_request(gw.addr, "CreateScriptDeviceState"), false)
            .unwrap();
        stalled.push((response, stream));
    }
    assert_eq!(
        send.current_max_send_streams(),
        100,
        "the server's stream limit"
    );

    // Everyone else is still served while the streams hang.
    assert_eq!(health(gw.addr).await.unwrap(), ServingStatus::Serving);
    let mut c = client(&gw).await;
    for _ in 0..5 {
        c.create_script_device_state(create_device_state("ok".into()))
            .await
            .expect("a normal call is served during the attack");
    }

    // The stalled calls are ended once their read time is up.
    let started = Instant::now();
    for (response, _stream) in stalled.drain(..10) {
        let (code, message) = grpc_status(response, Duration::from_secs(20))
            .await
            .expect("a stalled call is answered");
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
        assert!(message.contains("--request-read-timeout"), "{message}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Issue 11, item 2: a client that never reads its responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cannot_grow_memory_without_bound() {
    let gw = spawn(&[]);
    let mut c = client(&gw).await;
    let big = "r".repeat(200 * 1024);
    let created = c
        .create_script_device_state(create_device_state(big))
        .await
        .unwrap()
        .into_inner();
    let get = framed(
        &GetScriptDeviceStateRequest {
            name: created.name.clone(),
        }
        .encode_to_vec(),
    );
    c.get_script_device_state(GetScriptDeviceStateRequest {
        name: created.name.clone(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = gw.rss_kib();

    // A zero receive window: no response byte can be delivered.
    let mut send = raw(gw.addr, 0).await;
    let mut pending = Vec::new();
    for _ in 0..400 {
        match timeout(Duration::from_secs(2), send.clone().ready()).await {
            Ok(Ok(ready)) => send = ready,
            _ => break,
        }
        let (response, mut stream) = send
            .send_request(grpc_request(gw.addr, "GetScriptDeviceState"), false)
            .unwrap();
        stream.send_data(get.clone(), true).unwrap();
        pending.push(response);
    }
    // Wait until every call is answered (response headers need no window):
    // with its data held back, or refused past the send budget.
    let mut refused = 0;
    for response in pending.drain(..) {
        let r = timeout(Duration::from_secs(60), response)
            .await
            .expect("every call is answered")
            .unwrap();
        if r.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(b"8") {
            refused += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = gw.rss_kib();

    // Normal calls on other connections are still served.
    let got = c
        .get_script_device_state(GetScriptDeviceStateRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(got.into_inner().name, created.name);
    let growth_mib = during.saturating_sub(before) / 1024;
    eprintln!("slow reader: RSS {before} KiB -> {during} KiB, {refused} calls refused");
    assert!(refused > 0, "the send budget refused calls");
    // 400 unread responses of 200 KiB would be 80 MiB held. What is measured
    // also holds the calls' transient buffers not yet returned by the
    // allocator (20-40 MiB with glibc's, 35-45 MiB with mimalloc's).
    assert!(growth_mib < 60, "RSS grew by {growth_mib} MiB");
}

/// Issue 11, item 4: connections that never send the HTTP/2 preface.
#[tokio::test]
async fn silent_connections_are_capped_and_timed_out() {
    let gw = spawn(&[
        "--max-connections",
        "50",
        "--handshake-timeout",
        "1s",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut silent = Vec::new();
    for _ in 0..120 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // Every one of them is closed by the gateway: the excess at once, the
    // rest when their handshake time is up.
    let started = Instant::now();
    for stream in &mut silent {
        let mut buf = [0u8; 64];
        let read = timeout(Duration::from_secs(15), stream.read(&mut buf))
            .await
            .expect("the gateway closes a silent connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    assert_eq!(health(gw.addr).await.unwrap(), ServingStatus::Serving);
    client(&gw)
        .await
        .create_script_device_state(create_device_state("ok".into()))
        .await
        .unwrap();
    let metrics = reqwest::get(format!("http://{}/metrics", gw.admin.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count(r#"runstate_connections_refused_total{reason="max_connections"}"#) >= 70.0,
        "{metrics}"
    );
    assert!(
        count(r#"runstate_connections_refused_total{reason="handshake_timeout"}"#) >= 50.0,
        "{metrics}"
    );
}

/// Wrong answers: malformed protobuf, invalid UTF-8, an announced size over the limit.
#[tokio::test]
async fn bad_messages_get_the_callers_fault_codes_with_plain_messages() {
    let gw = spawn(&["--max-request-bytes", "4096"]);
    let mut send = raw(gw.addr, 65_535).await;
    let cases: [(&str, Bytes, Code, &str); 4] = [
        // parent (field 1) holding invalid UTF-8.
        (
            "CreateScriptDeviceState",
            framed(&[0x0a, 0x02, 0xff, 0xfe]),
            Code::InvalidArgument,
            "parent: is not valid UTF-8",
        ),
        // A length running past the end of the message.
        (
            "GetScriptDeviceState",
            framed(&[0x0a, 0x09, b'x']),
            Code::InvalidArgument,
            "is not valid protobuf",
        ),
        // A nested message with invalid UTF-8 in its name.
        (
            "UpdateScriptDeviceState",
            framed(&[0x0a, 0x03, 0x0a, 0x01, 0xc0]),
            Code::InvalidArgument,
            "script_device_state.name: is not valid UTF-8",
        ),
        // A prefix announcing 100 MB: refused before reading it.
        (
            "CreateScriptDeviceState",
            Bytes::from_static(&[0, 0x05, 0xf5, 0xe1, 0x00, 0x0a]),
            Code::ResourceExhausted,
            "--max-request-bytes",
        ),
    ];
    for (rpc, body, code, text) in cases {
        send = send.ready().await.unwrap();
        let (response, mut stream) = send
            .send_request(grpc_request(gw.addr, rpc), false)
            .unwrap();
        // The announced-size case never ends its body.
        let end = code != Code::ResourceExhausted;
        stream.send_data(body, end).unwrap();
        let (got, message) = grpc_status(response, Duration::from_secs(10))
            .await
            .expect("answered");
        assert_eq!(got, code as i32, "{rpc}: {message}");
        assert!(message.contains(text), "{rpc}: {message}");
        assert!(
            !message.contains("Request."),
            "no internal type names: {message}"
        );
    }
}

/// Wrong answers: a body that escaping makes too large for Graph.
#[tokio::test]
async fn bodies_over_the_upstream_limit_are_refused_before_graph() {
    let mut app = helpers::spawn_app().await;
    let nul = "\0".repeat(250 * 1024);
    let err = app
        .client
        .create_script_device_state(create_device_state(nul.clone()))
        .await
        .unwrap_err();
    helpers::assert_violation(&err, "script_device_state.result_message");
    let err = app
        .client
        .update_script_device_state(UpdateScriptDeviceStateRequest {
            script_device_state: Some(ScriptDeviceState {
                name: "deviceManagementScripts/s/deviceRunStates/d".into(),
                result_message: Some(nul),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["result_message".into()],
            }),
        })
        .await
        .unwrap_err();
    helpers::assert_violation(&err, "script_device_state.result_message");
    assert_eq!(app.graph.request_count(), 0, "nothing reached Graph");

    // And Graph's own 413 is the caller's fault too.
    app.graph
        .inject(Fault::status(413).code("RequestEntityTooLarge"));
    let err = app
        .client
        .create_script_device_state(create_device_state("x".into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// Broken gRPC framing: INVALID_ARGUMENT (UNIMPLEMENTED for compression)
/// with a plain message, never INTERNAL or an internal type's name.
#[tokio::test]
async fn broken_framing_gets_invalid_argument_with_plain_messages() {
    let gw = spawn(&[]);
    let mut send = raw(gw.addr, 65_535).await;
    let name = GetScriptDeviceStateRequest {
        name: "deviceManagementScripts/s/deviceRunStates/d".into(),
    }
    .encode_to_vec();
    let with_prefix = |flag: u8, length: u32, data: &[u8]| {
        let mut b = BytesMut::new();
        b.put_u8(flag);
        b.put_u32(length);
        b.put_slice(data);
        b.freeze()
    };
    let unary = "GetScriptDeviceState";
    let stream = "StreamCreateScriptDeviceStates";
    let item = CreateScriptDeviceStateRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        ..Default::default()
    }
    .encode_to_vec();
    /// What is sent, on which RPC, with which `grpc-encoding`, and the
    /// code and text expected.
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Bytes, Code, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a prefix shorter than the message",
            unary,
            None,
            with_prefix(0, 5, &name),
            Code::InvalidArgument,
            "announces 5 bytes",
        ),
        (
            "a prefix longer than the message",
            unary,
            None,
            with_prefix(0, name.len() as u32 + 10, &name),
            Code::InvalidArgument,
            "announces",
        ),
        (
            "a 3-byte prefix",
            unary,
            None,
            Bytes::from_static(&[0, 0, 0]),
            Code::InvalidArgument,
            "cut short after 3 bytes",
        ),
        (
            "the compressed flag without grpc-encoding",
            unary,
            None,
            with_prefix(1, name.len() as u32, &name),
            Code::InvalidArgument,
            "marked compressed",
        ),
        (
            "flag byte 7",
            unary,
            None,
            with_prefix(7, name.len() as u32, &name),
            Code::InvalidArgument,
            "compression flag 7",
        ),
        (
            "no message at all",
            unary,
            None,
            Bytes::new(),
            Code::InvalidArgument,
            "holds no message",
        ),
        (
            "an unsupported compression",
            unary,
            Some("gzip"),
            with_prefix(1, name.len() as u32, &name),
            Code::Unimplemented,
            "uncompressed",
        ),
        (
            "flag byte 7 in a stream",
            stream,
            None,
            with_prefix(7, item.len() as u32, &item),
            Code::InvalidArgument,
            "compression flag 7",
        ),
        (
            "a stream ending inside a message",
            stream,
            None,
            with_prefix(0, item.len() as u32 + 10, &item),
            Code::InvalidArgument,
            "ended inside a message",
        ),
        (
            "a stream message that is not protobuf",
            stream,
            None,
            with_prefix(0, 3, &[0x0a, 0x09, b'x']),
            Code::InvalidArgument,
            "is not valid protobuf",
        ),
    ];
    for (case, rpc, encoding, body, code, text) in cases {
        send = send.ready().await.unwrap();
        let mut request = grpc_request(gw.addr, rpc);
        if let Some(encoding) = encoding {
            request
                .headers_mut()
                .insert("grpc-encoding", encoding.parse().unwrap());
        }
        let (response, mut out) = send.send_request(request, false).unwrap();
        out.send_data(body, true).unwrap();
        let (got, message) = grpc_status(response, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{case}: no answer"));
        assert_eq!(got, code as i32, "{case}: {message}");
        assert!(message.contains(text), "{case}: {message}");
        for internal in ["Request", "Protobuf", "protocol error", "Unexpected EOF"] {
            assert!(!message.contains(internal), "{case}: {message}");
        }
    }
}

/// Issue 22, item 8: in a batch, each item's own JSON is held to Graph's
/// limit, not the envelope: a big item that fits is created, one over the
/// limit fails alone and is named `requests[i].<field>`.
#[tokio::test]
async fn a_batch_item_over_the_json_limit_fails_alone_and_is_named() {
    use runstate_gateway::pb::{
        BatchCreateScriptDeviceStatesRequest, ListScriptDeviceStatesRequest,
        script_device_state_result::Result as Item,
    };
    let gw = spawn(&["--max-request-bytes", "4194304"]);
    let mut client = client(&gw).await;
    // NULs grow six times as JSON: 100 KiB → 600 KB (under 1 MiB, but two
    // of them are over it); 200 KiB → 1.2 MB (over it on its own).
    let sizes = [100 * 1024, 200 * 1024, 100 * 1024];
    let requests = sizes
        .iter()
        .map(|&n| create_device_state("\0".repeat(n)))
        .collect();
    let results = client
        .batch_create_script_device_states(BatchCreateScriptDeviceStatesRequest {
            parent: String::new(),
            requests,
        })
        .await
        .expect("the batch is answered item by item")
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    for i in [0, 2] {
        match results[i].result.as_ref().unwrap() {
            Item::ScriptDeviceState(s) => {
                assert!(!s.id.is_empty(), "item {i}");
                let message = s.result_message.as_deref().unwrap_or_default();
                assert_eq!(message.len(), 100 * 1024, "item {i}");
            }
            Item::Status(st) => panic!("item {i} failed: {} {}", st.code, st.message),
        }
    }
    let Some(Item::Status(st)) = &results[1].result else {
        panic!(
            "item 1 must fail: {:?}",
            results[1].result.as_ref().map(|_| "created")
        );
    };
    assert_eq!(st.code, Code::InvalidArgument as i32, "{}", st.message);
    let bad = st
        .details
        .iter()
        .find(|d| d.type_url.ends_with("google.rpc.BadRequest"))
        .map(|d| tonic_types::pb::BadRequest::decode(d.value.as_slice()).unwrap())
        .expect("a BadRequest detail");
    let fields: Vec<&str> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["requests[1].script_device_state.result_message"]);

    // Graph holds the two that fit, and nothing of the third.
    let listed = client
        .list_script_device_states(ListScriptDeviceStatesRequest {
            parent: "deviceManagementScripts/s".into(),
            page_size: 10,
            read_mask: Some(prost_types::FieldMask {
                paths: vec!["id".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .script_device_states;
    assert_eq!(listed.len(), 2);
}
