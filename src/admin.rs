//! The admin HTTP server (`--admin-listen`): `/metrics` in the Prometheus
//! text format, `/livez`, and `/readyz` (503 while draining). It can bind
//! the pod address while the gRPC port stays on loopback, so probes and
//! scrapers reach it without reaching the write API.

use std::{sync::Arc, time::Duration};

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::server;

#[derive(Clone)]
struct Admin {
    metrics: Option<PrometheusHandle>,
    state: Arc<server::State>,
}

/// The admin routes.
pub fn router(metrics: Option<PrometheusHandle>, state: Arc<server::State>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Admin { metrics, state })
}

async fn render(State(admin): State<Admin>) -> impl IntoResponse {
    crate::metrics::refresh();
    match &admin.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "another metrics recorder is installed in this process\n".to_owned(),
        ),
    }
}

async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.state.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Serves the admin routes until `stop` completes; keeps the metrics
/// recorder's histograms trimmed meanwhile.
pub async fn serve(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    state: Arc<server::State>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(handle) = metrics.clone() {
        let upkeep = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        };
        let stop_upkeep = tokio::spawn(upkeep);
        let result = axum::serve(listener, router(metrics, state))
            .with_graceful_shutdown(stop)
            .await;
        stop_upkeep.abort();
        return result;
    }
    axum::serve(listener, router(metrics, state))
        .with_graceful_shutdown(stop)
        .await
}
