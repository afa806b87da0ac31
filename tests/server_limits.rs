//! Attacks from issue 22 on the server's limits, each bounded in count and
//! time, on loopback, against the real binary: idle streaming calls, idle
//! connections, silent admin connections.

#[allow(dead_code)]
#[path = "support/binary.rs"]
mod binary;
#[allow(dead_code)]
#[path = "support/raw_h2.rs"]
mod raw_h2;

use std::time::{Duration, Instant};

use binary::spawn;
use raw_h2::{connect, grpc_request};

const STREAM: &str = "StreamCreateScriptDeviceStates";

/// Opens `conns` connections with `per` silent streaming calls each.
async fn idle_streams(
    addr: std::net::SocketAddr,
    conns: usize,
    per: usize,
) -> Vec<(
    raw_h2::Raw,
    Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)>,
)> {
    let mut all = Vec::new();
    for _ in 0..conns {
        let mut raw = connect(addr).await;
        let mut streams = Vec::new();
        for _ in 0..per {
            let ready = tokio::time::timeout(Duration::from_secs(5), raw.send.clone().ready())
                .await
                .expect("stream capacity")
                .unwrap();
            raw.send = ready;
            streams.push(
                raw.send
                    .send_request(grpc_request(addr, STREAM), false)
                    .unwrap(),
            );
        }
        all.push((raw, streams));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_idle_streams() {
    let per: usize = std::env::var("PER").unwrap().parse().unwrap();
    let gw = spawn(&[
        "--max-streaming-calls",
        "20000",
        "--stream-idle-timeout",
        "60s",
    ]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.rss_kib();
    let started = Instant::now();
    let open = idle_streams(gw.addr, 200, per).await;
    eprintln!("opened in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = gw.rss_kib();
    drop(open);
    let mut trace = Vec::new();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trace.push(gw.rss_kib() / 1024);
    }
    eprintln!("RSS {before} -> {during} KiB; after close (MiB each s) {trace:?}");
}
