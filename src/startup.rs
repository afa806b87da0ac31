//! Wires the gateway together. Order: (1) the embedded emulator, when asked
//! for (see [`emulator`]), so Graph's URL is known; (2) the Graph client; (3) the listening
//! socket (and the admin socket), so tests can bind port 0 and read the
//! ports; (4) the gRPC services, served by [`crate::server`] until shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::config::{EmulatorArgs, Refusal, ServeArgs};
use crate::graph::{GraphClient, Options};
use crate::grpc::{RunStateApi, context};
use crate::outbox::{
    Outbox, OutboxSpec,
    drain::{Drain, Fallback},
    postgres::PgStore,
    redb::{OpenError, RedbStore},
};
use crate::pb::{
    self, longrunning::operations_server::OperationsServer,
    run_state_service_server::RunStateServiceServer,
};
use crate::server::{self, Handshake, Limits, Routes};
use crate::write::{
    self,
    budget::{Budget, Budgets, Counts},
    records::RequestIds,
    retry::RetryPolicy,
};
use std::path::PathBuf;

#[cfg(feature = "emulator")]
mod emulator;
#[cfg(feature = "emulator")]
use runstate_emulator::RunningEmulator;

/// `--graph-url`'s default; `--cloud` replaces it.
const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/beta";

/// Where Graph calls go: the command line's Graph, or the embedded emulator.
struct Upstream {
    url: String,
    token: Option<crate::config::Secret>,
    h2c: bool,
    /// The base URL of a local stand-in for Entra ID and IMDS.
    identity: Option<String>,
}

/// A built gateway, bound to its port but not yet serving.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    api: RunStateApi,
    args: ServeArgs,
    #[cfg(feature = "emulator")]
    emulator: Option<RunningEmulator>,
    admin: Option<TcpListener>,
    handshake: Option<Handshake>,
    outbox: Option<OutboxSetup>,
}

/// The outbox of a gateway, and how its store still has to be opened.
struct OutboxSetup {
    outbox: Arc<Outbox>,
    /// A file another process held at startup: opened once it is free.
    busy: Option<PathBuf>,
    /// The temporary directory of `--emulator`'s file, removed at the end.
    temporary: Option<PathBuf>,
    /// A PostgreSQL store, probed while the gateway runs (`/readyz`).
    server: Option<Arc<PgStore>>,
}

impl Application {
    pub async fn build(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut graph_url = args.graph.graph_url.clone();
        if args.graph.cloud != crate::config::Cloud::Global && graph_url == DEFAULT_GRAPH_URL {
            graph_url = crate::auth::cloud_graph_url(args.graph.cloud);
        }
        crate::tls::check_plaintext(&args.listener)?;
        let upstream = Upstream {
            url: graph_url,
            token: args.auth.graph_token.clone(),
            h2c: args.graph.graph_h2c,
            identity: None,
        };
        #[cfg(not(feature = "emulator"))]
        if args.graph.emulator {
            return Err(Refusal::error(crate::config::NO_EMULATOR));
        }
        #[cfg(feature = "emulator")]
        let (upstream, emulator) = emulator::embed(args, upstream).await?;
        let Upstream {
            url: graph_url,
            token,
            h2c,
            identity,
        } = upstream;

        let options = Options {
            h2c,
            connections: args.graph.graph_connections,
        };
        let settings = write::Settings {
            retry: RetryPolicy {
                max_retries: args.graph.graph_max_retries,
                ..RetryPolicy::default()
            },
            client_ids: args.graph.graph_client_ids,
            batch_concurrency: args.calls.batch_concurrency as usize,
        };
        let redis = args
            .state
            .state_store
            .open()
            .map_err(|e| Refusal::error(format!("--state-store: {e}")))?;
        let budget = |counts, flag: write::budget::BudgetFlag| {
            flag.0.map(|spec| {
                std::sync::Arc::new(Budget::new(
                    counts,
                    spec,
                    redis.clone(),
                    args.budget.replicas,
                ))
            })
        };
        let budgets = Budgets {
            writes: budget(Counts::Writes, args.budget.write_budget),
            requests: budget(Counts::Requests, args.budget.read_budget),
        };
        let extra_roots = match &args.graph.graph_ca_file {
            Some(path) => crate::tls::read_ca_file(path)?,
            None => Vec::new(),
        };
        let graph = GraphClient::with_roots(&graph_url, options, &extra_roots)
            .map_err(|e| Refusal::error(format!("--graph-url / --graph-connections: {e}")))?;
        let records = std::sync::Arc::new(RequestIds::new(redis, args.state.state_store_outage));
        let engine = write::Engine::new(graph, settings, budgets, records);
        let auth_settings = crate::auth::settings(
            &crate::config::AuthArgs {
                graph_token: token.clone(),
                ..args.auth.clone()
            },
            &args.graph,
            &graph_url,
            identity.as_deref(),
            &extra_roots,
        )?;
        #[cfg(feature = "emulator")]
        if let Some(running) = &emulator {
            emulator::register(running, &auth_settings)?;
        }
        let auth = crate::auth::authorizer(auth_settings, args.graph.allow_http_upstream)?;
        tracing::info!(mode = ?auth.mode(), "Graph tokens");
        let token = token
            .map(|t| context::bearer(t.expose()))
            .transpose()
            .map_err(|_| Refusal::error("--graph-token: not a valid header value"))?;
        let mut api = RunStateApi::new(engine, token, args.calls.request_timeout)
            .with_auth(auth)
            .with_stream_window(args.calls.stream_max_in_flight as usize);
        let outbox = open_outbox(args).await?;
        if let Some(setup) = &outbox {
            api = api.with_outbox(Arc::clone(&setup.outbox));
        }
        if let Some(key) = &args.calls.page_token_key {
            api = api.with_page_tokens(crate::convert::page_token::PageTokens::from_secret(
                key.expose(),
            ));
        }

        let tls = crate::tls::TlsSource::from_args(&args.listener)?;
        let listener = TcpListener::bind(args.listener.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listener.listen))?;
        let local_addr = listener.local_addr()?;
        let admin = match args.admin.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            api,
            args: args.clone(),
            #[cfg(feature = "emulator")]
            emulator,
            admin,
            handshake: tls.map(|t| t.handshake()),
            outbox,
        })
    }

    /// The address of the admin HTTP server, when `--admin-listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Wraps every accepted connection in `handshake` (TLS), within the
    /// handshake timeout.
    pub fn set_handshake(&mut self, handshake: Handshake) {
        self.handshake = Some(handshake);
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The embedded emulator, when started with `--emulator`.
    #[cfg(feature = "emulator")]
    pub fn emulator(&self) -> Option<&RunningEmulator> {
        self.emulator.as_ref()
    }

    /// Serves until `shutdown` completes, then drains: health turns
    /// NOT_SERVING, the listener closes, calls in flight get up to
    /// `--shutdown-grace`, the rest are cancelled.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let metrics = crate::metrics::install();
        // Ends with the server (aborted on drop).
        let _upkeep = metrics
            .clone()
            .map(|handle| AbortOnDrop(tokio::spawn(crate::metrics::upkeep(handle))));
        let _trim = AbortOnDrop(tokio::spawn(crate::memory::trim()));
        let state = Arc::new(server::State::default());
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<RunStateServiceServer<RunStateApi>>()
            .await;

        // Built on the first reflection call: their decoded descriptor sets
        // are a few hundred KB (the sets are compiled in; tests/ops.rs and the
        // README test list and describe the services through them).
        fn reflection() -> tonic_reflection::server::Builder<'static> {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
        }

        let mut tasks = Vec::new();
        let mut drain = None;
        if let Some(setup) = &self.outbox {
            let _ = state.outbox.set(Arc::clone(&setup.outbox));
            if let Some(path) = setup.busy.clone() {
                tasks.push(AbortOnDrop(tokio::spawn(open_when_free(
                    Arc::clone(&setup.outbox),
                    path,
                ))));
            }
            if let Some(store) = setup.server.clone() {
                tasks.push(AbortOnDrop(tokio::spawn(probe(store))));
            }
            let api = self.api.clone();
            let fallback: Fallback = Arc::new(move || {
                let api = api.clone();
                Box::pin(async move { api.own_token().await })
            });
            let d = Arc::new(Drain::new(
                Arc::clone(&setup.outbox),
                self.api.engine().clone(),
                fallback,
                self.args.calls.batch_concurrency as usize,
            ));
            let task = AbortOnDrop(tokio::spawn(Arc::clone(&d).run()));
            drain = Some((d, task, Arc::clone(&setup.outbox)));
        }
        let operations = OperationsServer::new(self.api.clone())
            .max_decoding_message_size(self.args.limits.max_request_bytes)
            .max_encoding_message_size(4 << 20);
        let service = RunStateServiceServer::new(self.api)
            .max_decoding_message_size(self.args.limits.max_request_bytes)
            .max_encoding_message_size(4 << 20);

        let routes = Routes::default()
            .add_service(health_service)
            .add_lazy(move || reflection().build_v1().ok())
            .add_lazy(move || reflection().build_v1alpha().ok())
            .add_service(operations)
            .add_service(service.clone());

        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin endpoint listening (/metrics, /livez, /readyz)");
            }
            let stop = async {
                let _ = admin_stopped.await;
            };
            let limits = crate::admin::Limits {
                max_connections: self.args.admin.admin_max_connections as usize,
                header_read_timeout: self.args.admin.admin_header_read_timeout,
                idle_timeout: self.args.admin.admin_idle_timeout,
            };
            tokio::spawn(crate::admin::serve(
                listener,
                metrics,
                Arc::clone(&state),
                limits,
                stop,
            ))
        });

        let a = &self.args;
        let limits = Limits {
            max_connections: a.limits.max_connections as usize,
            max_streams_per_connection: a.limits.max_streams_per_connection,
            handshake_timeout: a.limits.handshake_timeout,
            request_read_timeout: a.limits.request_read_timeout,
            max_request_bytes: a.limits.max_request_bytes,
            max_concurrent_requests: a.limits.max_concurrent_requests,
            connection_send_budget: a.limits.connection_send_budget as usize,
            shutdown_grace: a.calls.shutdown_grace,
            max_streaming_calls: a.limits.max_streaming_calls as usize,
            stream_idle_timeout: a.limits.stream_idle_timeout,
            idle_connection_timeout: a.limits.idle_connection_timeout,
        };
        let on_drain = async {
            health_reporter
                .set_not_serving::<RunStateServiceServer<RunStateApi>>()
                .await;
            health_reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            tracing::info!("health: NOT_SERVING");
        };
        tracing::info!(addr = %self.local_addr, "runstate-gateway listening");
        server::serve(
            self.listener,
            routes,
            service,
            limits,
            state,
            self.handshake,
            shutdown,
            on_drain,
        )
        .await;
        let _ = admin_stop.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        if let Some((d, task, outbox)) = drain {
            stop_drain(&d, task, &outbox, self.args.calls.shutdown_grace).await;
        }
        drop(tasks);
        if let Some(dir) = self.outbox.and_then(|s| s.temporary) {
            let _ = std::fs::remove_dir_all(dir);
        }
        #[cfg(feature = "emulator")]
        if let Some(emulator) = self.emulator {
            emulator.stop().await;
        }
        tracing::info!("runstate-gateway stopped");
        Ok(())
    }
}

/// Opens the outbox's store: `--outbox`, or with `--emulator` a file in a
/// temporary directory. A corrupt or unreadable file refuses startup naming
/// it; a file another process holds is opened once it is free (the gateway
/// is not ready until then). A PostgreSQL server that cannot be reached or
/// whose schema cannot be migrated refuses startup naming its host (never
/// the password).
async fn open_outbox(args: &ServeArgs) -> anyhow::Result<Option<OutboxSetup>> {
    let new_outbox = |place: String| {
        Arc::new(Outbox::new(
            args.outbox.outbox_max_pending.0,
            args.outbox.operation_retention,
            args.budget.write_budget.0,
            place,
        ))
    };
    let (path, temporary) = match &args.outbox.outbox {
        Some(OutboxSpec::File(path)) => (path.clone(), None),
        Some(OutboxSpec::Postgres(url)) => {
            let store = PgStore::open(url).await.map_err(|e| {
                Refusal::error(format!("--outbox: cannot open the PostgreSQL outbox {e}"))
            })?;
            tracing::info!(url = %url.shown(), "outbox store open");
            let store = Arc::new(store);
            let outbox = new_outbox(url.shown().to_owned());
            outbox.watch(store.reachable());
            outbox.open_with(Arc::clone(&store) as Arc<dyn crate::outbox::store::Store>);
            return Ok(Some(OutboxSetup {
                outbox,
                busy: None,
                temporary: None,
                server: Some(store),
            }));
        }
        None if args.graph.emulator => {
            let dir = std::env::temp_dir().join(format!(
                "runstate-gateway-outbox-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            (dir.join("outbox.redb"), Some(dir))
        }
        None => return Ok(None),
    };
    let outbox = new_outbox(path.display().to_string());
    let busy = match RedbStore::open(&path) {
        Ok(store) => {
            tracing::info!(path = %path.display(), "outbox store open");
            outbox.open_with(Arc::new(store));
            None
        }
        Err(OpenError::Busy { .. }) => {
            tracing::warn!(path = %path.display(), "another process has the outbox file open; not ready until it is free");
            Some(path)
        }
        Err(e @ OpenError::Unreadable { .. }) => {
            return Err(Refusal::error(format!(
                "--outbox: cannot open the outbox store {e}"
            )));
        }
    };
    Ok(Some(OutboxSetup {
        outbox,
        busy,
        temporary,
        server: None,
    }))
}

/// Asks the PostgreSQL store's server every few seconds whether it answers,
/// so `/readyz` turns not ready while it does not (store calls note it too).
async fn probe(store: Arc<PgStore>) {
    let mut was = true;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let up = store.probe().await;
        if up != was {
            if up {
                tracing::info!(url = %store.shown(), "the outbox store answers again");
            } else {
                tracing::error!(url = %store.shown(), "the outbox store does not answer; not ready until it does");
            }
            was = up;
        }
    }
}

/// Opens the outbox file once the process holding it lets it go.
async fn open_when_free(outbox: Arc<Outbox>, path: PathBuf) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let p = path.clone();
        match tokio::task::spawn_blocking(move || RedbStore::open(&p)).await {
            Ok(Ok(store)) => {
                tracing::info!(path = %path.display(), "outbox store open");
                outbox.open_with(Arc::new(store));
                return;
            }
            Ok(Err(OpenError::Busy { .. })) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot open the outbox store");
            }
            Err(_) => return,
        }
    }
}

/// Runs the emulator alone until Ctrl-C or SIGTERM (the `emulator` command).
pub async fn run_emulator(args: &EmulatorArgs) -> anyhow::Result<()> {
    #[cfg(feature = "emulator")]
    return Ok(runstate_emulator::serve(&args.emulator, shutdown_signal()).await?);
    #[cfg(not(feature = "emulator"))]
    {
        let _ = args;
        anyhow::bail!(crate::config::NO_EMULATOR)
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// The tokio runtime: `TOKIO_WORKER_THREADS` workers, else one per CPU the
/// process may use (a container's CPU limit included).
///
/// One worker gets a current-thread runtime. The multi-thread scheduler runs
/// a task woken by the running one next (its "LIFO slot"), so with a single
/// worker each HTTP/2 connection task ran after every call and wrote that
/// call's frames alone: two `writev`s a call. On one thread, every ready
/// call runs first and each connection then writes them together.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                Refusal::error(format!(
                    "TOKIO_WORKER_THREADS={v:?}: use a number of threads, 1 to 1024"
                ))
            })?,
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    crate::memory::configure();
    builder.on_thread_park(crate::memory::on_park);
    Ok(builder.enable_all().build()?)
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops the outbox drain at shutdown: no new group is claimed, groups in
/// flight get up to `grace` to be recorded (the rest stay marked in flight),
/// then this process's drain leases are released so another replica goes
/// on at once.
async fn stop_drain(drain: &Drain, mut task: AbortOnDrop, outbox: &Outbox, grace: Duration) {
    drain.stop();
    if tokio::time::timeout(grace, &mut task.0).await.is_err() {
        tracing::warn!("shutdown grace over: outbox writes still in flight stay marked so");
    }
    drop(task);
    if let Ok(store) = outbox.store() {
        match tokio::time::timeout(Duration::from_secs(5), store.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the outbox drain leases"),
            Err(_) => tracing::warn!("releasing the outbox drain leases timed out"),
        }
    }
}
