//! The admin HTTP server (`--admin-listen`): `/metrics` in the Prometheus
//! text format, `/livez`, and `/readyz` (503 while draining). It can bind
//! the pod address while the gRPC port stays on loopback, so probes and
//! scrapers reach it without reaching the write API. HTTP/1.1 and HTTP/2,
//! served with hyper.

use std::{convert::Infallible, pin::pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::server;

struct Admin {
    metrics: Option<PrometheusHandle>,
    state: Arc<server::State>,
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

impl Admin {
    /// The answer to one request: GET (or HEAD) of a route, else 404 or 405.
    fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let route = request.uri().path();
        if !matches!(route, "/metrics" | "/livez" | "/readyz") {
            return text(StatusCode::NOT_FOUND, TEXT, "");
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, TEXT, "");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET,HEAD"));
            return response;
        }
        match route {
            "/metrics" => match &self.metrics {
                Some(handle) => text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    handle.render(),
                ),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "another metrics recorder is installed in this process\n",
                ),
            },
            "/livez" => text(StatusCode::OK, TEXT, "ok\n"),
            _ if self.state.draining() => text(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n"),
            _ => text(StatusCode::OK, TEXT, "ready\n"),
        }
    }
}

/// Serves the admin routes until `stop` completes, then lets the open
/// connections finish; keeps the metrics recorder's histograms trimmed
/// meanwhile.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    state: Arc<server::State>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let upkeep = metrics.clone().map(|handle| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    });
    let admin = Arc::new(Admin { metrics, state });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut stop = pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = Arc::clone(&admin);
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            std::future::ready(Ok::<_, Infallible>(admin.answer(&request)))
        });
        let conn = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        tokio::spawn(graceful.watch(conn));
    }
    drop(listener);
    graceful.shutdown().await;
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
}
