//! Raw HTTP/2 clients (the `h2` crate) for attacks on the real binary:
//! streams opened and left silent, connections that only answer PINGs.

use std::{net::SocketAddr, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{net::TcpStream, task::JoinHandle, time::timeout};

pub const API: &str = "/intune.runstates.v1.RunStateService/";

/// A raw connection: its request handle and the task driving it (it ends
/// when the server closes the connection).
pub struct Raw {
    pub send: h2::client::SendRequest<Bytes>,
    pub driver: JoinHandle<Result<(), h2::Error>>,
}

/// Opens an HTTP/2 connection; the `h2` client answers PINGs by itself.
pub async fn connect(addr: SocketAddr) -> Raw {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    Raw { send, driver }
}

pub fn grpc_request(addr: SocketAddr, rpc: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{API}{rpc}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A gRPC length-prefixed message.
pub fn framed(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + 5);
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// The gRPC status of a response: from its headers (trailers-only) or
/// trailers, reading and releasing any messages before them.
pub async fn grpc_status(
    response: h2::client::ResponseFuture,
    limit: Duration,
) -> Option<(i32, String)> {
    let response = timeout(limit, response).await.ok()?.ok()?;
    if let Some(status) = read_status(response.headers()) {
        return Some(status);
    }
    let mut body = response.into_body();
    while let Some(chunk) = timeout(limit, body.data()).await.ok()? {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = timeout(limit, body.trailers()).await.ok()?.ok()??;
    read_status(&trailers)
}

fn read_status(h: &http::HeaderMap) -> Option<(i32, String)> {
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
}
