//! Attacks from issue 22 on the server's limits, each bounded in count and
//! time, on loopback, against the real binary (raw HTTP/2 with the `h2`
//! crate): idle streaming calls, idle connections, silent admin connections.

#[allow(dead_code)]
#[path = "support/binary.rs"]
mod binary;
#[allow(dead_code)]
#[path = "support/raw_h2.rs"]
mod raw_h2;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message;
use runstate_gateway::pb::{
    CreateScriptDeviceStateRequest, ScriptDeviceState, StreamCreateScriptDeviceStatesRequest,
    run_state_service_client::RunStateServiceClient,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{sleep, timeout},
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use binary::{Gateway, spawn};
use raw_h2::{Raw, connect, framed, grpc_request, grpc_status};

const STREAM: &str = "StreamCreateScriptDeviceStates";

type Call = (h2::client::ResponseFuture, h2::SendStream<Bytes>);

/// Opens `per` streaming calls on `raw` that send nothing.
async fn idle_streams(raw: &mut Raw, addr: SocketAddr, per: usize) -> Vec<Call> {
    let mut calls = Vec::new();
    for _ in 0..per {
        raw.send = timeout(Duration::from_secs(10), raw.send.clone().ready())
            .await
            .expect("stream capacity")
            .unwrap();
        calls.push(
            raw.send
                .send_request(grpc_request(addr, STREAM), false)
                .unwrap(),
        );
    }
    calls
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

async fn create_one(gw: &Gateway) {
    let mut c = RunStateServiceClient::connect(gw.endpoint()).await.unwrap();
    c.create_script_device_state(CreateScriptDeviceStateRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        ..Default::default()
    })
    .await
    .expect("a unary call is served");
}

/// The value of a series in the admin endpoint's /metrics.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Issue 22, item 1: 20,000 streaming calls that send nothing (200
/// connections of 100), under the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streaming_calls_cost_little_memory_and_give_it_back() {
    let gw = spawn(&[
        "--max-streaming-calls",
        "20000",
        "--stream-idle-timeout",
        "60s",
    ]);
    sleep(Duration::from_millis(500)).await;
    let before = gw.rss_kib();
    let mut open = Vec::new();
    for _ in 0..200 {
        let mut raw = connect(gw.addr).await;
        let calls = idle_streams(&mut raw, gw.addr, 100).await;
        open.push((raw, calls));
    }
    // Every call is held (none answered), and the gateway still serves.
    assert_eq!(health(gw.addr).await.unwrap(), ServingStatus::Serving);
    sleep(Duration::from_secs(2)).await;
    let during = gw.rss_kib();
    let growth_mib = during.saturating_sub(before) / 1024;
    eprintln!("20,000 idle streams: RSS {before} KiB -> {during} KiB");
    assert!(growth_mib <= 64, "RSS grew by {growth_mib} MiB");

    drop(open);
    let closed = Instant::now();
    let mut after = gw.rss_kib();
    while after > before + 16 * 1024 && closed.elapsed() < Duration::from_secs(10) {
        sleep(Duration::from_millis(250)).await;
        after = gw.rss_kib();
    }
    eprintln!("after close: RSS {after} KiB");
    assert!(
        after <= before + 16 * 1024,
        "RSS still {after} KiB 10 s after close (was {before} KiB)"
    );
}

/// Issue 22, item 1: past --max-streaming-calls a stream is refused at
/// once; unary calls are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_past_the_cap_are_refused() {
    let gw = spawn(&[
        "--max-streaming-calls",
        "150",
        "--stream-idle-timeout",
        "60s",
    ]);
    let mut raw = connect(gw.addr).await;
    let mut calls = idle_streams(&mut raw, gw.addr, 100).await;
    let mut other = connect(gw.addr).await;
    calls.extend(idle_streams(&mut other, gw.addr, 100).await);
    let (responses, _streams): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
    // The 50 past the cap are answered at once; the 150 under it are held.
    let answers = futures_util::future::join_all(
        responses
            .into_iter()
            .map(|r| grpc_status(r, Duration::from_secs(3))),
    )
    .await;
    let mut refused = 0;
    for (code, message) in answers.into_iter().flatten() {
        assert_eq!(code, Code::ResourceExhausted as i32, "{message}");
        assert!(message.contains("--max-streaming-calls"), "{message}");
        refused += 1;
    }
    assert_eq!(refused, 50);
    create_one(&gw).await;
}

/// Issue 22, item 1: a stream that sends nothing, or stops sending once
/// answered, is ended after --stream-idle-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streaming_calls_are_ended() {
    let gw = spawn(&["--stream-idle-timeout", "2s"]);
    let mut raw = connect(gw.addr).await;
    let mut calls = idle_streams(&mut raw, gw.addr, 2).await;
    let (answered, mut sending) = calls.pop().unwrap();
    let item = StreamCreateScriptDeviceStatesRequest {
        parent: "deviceManagementScripts/s".into(),
        script_device_state: Some(ScriptDeviceState::default()),
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    sending
        .send_data(framed(&item.encode_to_vec()), false)
        .unwrap();
    let (silent, _keep) = calls.pop().unwrap();

    let started = Instant::now();
    let (code, message) = grpc_status(silent, Duration::from_secs(20))
        .await
        .expect("the silent stream is ended");
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("--stream-idle-timeout"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // The other got its answer first, then was ended the same way.
    let response = timeout(Duration::from_secs(20), answered)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = timeout(Duration::from_secs(20), body.data())
        .await
        .unwrap()
        .expect("an answer")
        .unwrap();
    assert!(first.len() > 5, "one answer message");
    let _ = body.flow_control().release_capacity(first.len());
    assert!(
        timeout(Duration::from_secs(20), body.data())
            .await
            .unwrap()
            .is_none()
    );
    let trailers = timeout(Duration::from_secs(20), body.trailers())
        .await
        .unwrap()
        .unwrap()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    drop(sending);
}

/// Issue 22, item 2: connections that open no stream (and answer PINGs)
/// fill --max-connections; they get GOAWAY after the idle timeout and new
/// callers get in. A connection with a stream open is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_new_callers_get_in() {
    let gw = spawn(&["--max-connections", "11", "--idle-connection-timeout", "2s"]);
    // One connection watching health: a stream stays open on it.
    let mut watching = connect(gw.addr).await;
    watching.send = watching.send.clone().ready().await.unwrap();
    let watch = http::Request::post(format!("http://{}/grpc.health.v1.Health/Watch", gw.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (watch_response, mut watch_stream) = watching.send.send_request(watch, false).unwrap();
    watch_stream
        .send_data(framed(&HealthCheckRequest::default().encode_to_vec()), true)
        .unwrap();
    let watch_response = timeout(Duration::from_secs(10), watch_response)
        .await
        .unwrap()
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(connect(gw.addr).await);
    }
    // Full: a new caller is turned away.
    assert!(health(gw.addr).await.is_err(), "the connection cap is full");

    for raw in idle {
        let ended = timeout(Duration::from_secs(15), raw.driver)
            .await
            .expect("the gateway closes an idle connection");
        assert!(ended.unwrap().is_ok(), "closed with GOAWAY, not an error");
    }
    assert!(
        !watching.driver.is_finished(),
        "a connection with a stream stays"
    );
    assert_eq!(health(gw.addr).await.unwrap(), ServingStatus::Serving);
    create_one(&gw).await;
    drop(watch_response);
}

/// Issue 22, item 3: the admin port has a connection cap and timeouts of
/// its own, and the gRPC port keeps serving while it is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_drops_silent_connections_and_caps_them() {
    let gw = spawn(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-max-connections",
        "4",
        "--admin-header-read-timeout",
        "3s",
        "--admin-idle-timeout",
        "1s",
    ]);
    let admin = gw.admin.unwrap();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    sleep(Duration::from_millis(200)).await;
    // Past the cap: closed as soon as it is accepted.
    let mut extra = TcpStream::connect(admin).await.unwrap();
    let mut buf = [0u8; 64];
    let read = timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("the extra admin connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The gRPC port serves meanwhile.
    assert_eq!(health(gw.addr).await.unwrap(), ServingStatus::Serving);
    create_one(&gw).await;
    // The silent ones are dropped (--admin-idle-timeout).
    for stream in &mut silent {
        let read = timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the gateway closes a silent admin connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    // A client trickling its headers is dropped at --admin-header-read-timeout.
    let mut trickle = TcpStream::connect(admin).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if trickle.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        // Anything read is the end (hyper may answer 408 before closing).
        if timeout(Duration::from_millis(300), trickle.read(&mut buf))
            .await
            .is_ok()
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled header was not cut off");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Once they are gone, the admin port answers again.
    assert!(
        metric(
            admin,
            r#"runstate_connections_refused_total{reason="admin_max_connections"}"#
        )
        .await
            >= 1.0
    );
}
