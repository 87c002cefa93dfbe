//! `credhost serve`: the HTTP server with graceful shutdown.
//!
//! Our own accept loop instead of `axum::serve` (issue 11, slowloris): every connection
//! gets a header-read deadline, an idle deadline, and holds one of `max_connections`
//! slots. At the cap the loop stops accepting, so new connections wait in the kernel's
//! backlog (FIFO) until a slot frees — at the latest when the header deadline reclaims a
//! stalled one — rather than being refused: refusing would let anyone who fills the cap
//! lock every health check out, while waiting delays it by at most the header timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::api::{self, AppState};
use crate::config::{Config, ServerConfig};
use crate::service::Service;
use crate::store::Role;

/// Serves until SIGINT/SIGTERM, then drains requests in flight.
///
/// Start-up order: bind first (a port in use fails before anything is written: no data
/// dir, no dev user, no token), then open the store and, in dev mode, create the first
/// admin and print its token, then print `listening on`. Plugins compile after that,
/// built-ins first: `/healthz` answers at once, `/readyz` says 503 not ready and API
/// requests wait until the plugins are loaded and the declared config is applied. A
/// failure there (a broken built-in, a bad declared credential) stops the server with
/// an error; a signal meanwhile lets start-up finish, then shuts down. `config_path` is
/// re-read by a plugin reload (for the overrides).
pub async fn serve(config: Config, config_path: Option<std::path::PathBuf>) -> Result<(), String> {
    let started = std::time::Instant::now();
    config.server.check()?;
    // `[[webhooks]]` and `[webhook_delivery]` checked, secrets read: before anything is written.
    let webhooks = crate::service::webhooks::Deployment::from_config(&config).await?;
    config.monitor.check()?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cfg = config.clone();
    let service: Arc<Service> = tokio::task::spawn_blocking(move || crate::app::starting_service(&cfg, config_path))
        .await
        .map_err(|e| e.to_string())??;
    if config.keys.dev {
        bootstrap_dev_admin(&service)?;
    }
    // Delivers the outbox from now on; what a crash left undelivered goes first.
    let deliveries = crate::service::webhooks::start(service.clone(), webhooks, config.webhook_delivery.clone());
    // Before the declared credentials are applied, so they are scheduled as they are created.
    service.install_monitor(crate::service::monitor::Policy::from(&config.monitor));
    let monitor_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor_flag = monitor_stop.clone();
    let state = AppState::starting(service.clone());
    let app = api::router(state.clone(), &config.server);
    tracing::info!(%addr, "credhost listening; loading plugins");
    let signalled = shutdown_signal();
    // A line tests and scripts can wait for (the port may have been chosen by the OS).
    println!("listening on http://{addr}");

    let (svc, cfg) = (service.clone(), config.clone());
    let startup = tokio::spawn(async move {
        tokio::task::spawn_blocking(move || {
            svc.registry().load_all().map_err(|e| e.to_string())?;
            // Declared users and credentials, before the first API request can see them.
            crate::provision::reconcile(&svc, &cfg).map(|_| ())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)?;
        state.ready.set();
        crate::service::monitor::start(state.service.clone(), monitor_flag);
        tracing::info!(
            types = state.service.types().len(),
            startup_ms = started.elapsed().as_millis() as u64,
            "credhost ready"
        );
        Ok::<(), String>(())
    });
    let failed = Arc::new(std::sync::Mutex::new(None));
    let failure = failed.clone();
    let record = move |r: Result<Result<(), String>, tokio::task::JoinError>| {
        let e = match r {
            Ok(Ok(())) => return false,
            Ok(Err(e)) => e,
            // A JoinError's text quotes the panic payload: the hook logged the location.
            Err(_) => "start-up failed: a task panicked (see the log)".to_string(),
        };
        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        true
    };
    // Stops on a signal, or when start-up fails. A signal during start-up lets start-up
    // finish first: declared config is never left applied halfway.
    let stop = async move {
        let mut startup = startup;
        tokio::pin!(signalled);
        tokio::select! {
            _ = signalled.as_mut() => {
                if !startup.is_finished() {
                    tracing::info!("finishing start-up before shutting down");
                }
                record(startup.await);
            }
            r = &mut startup => {
                if !record(r) {
                    signalled.as_mut().await;
                }
            }
        }
    };
    accept_loop(listener, app, &config.server, stop).await;
    monitor_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    deliveries.abort();
    if let Err(e) = service.store().flush_audit() {
        tracing::error!(error = %e, "could not make the last audit records durable");
    }
    close_store(service).await;
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// How long shutdown waits for background work (a scheduled test in flight, a request
/// past the grace period) to let go of the store.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Closes a redb store once nothing else holds it, so the next start finds the file closed
/// and opens it at once instead of checking it whole (time growing with the file: ~0.4 s
/// at 100,000 credentials). Past [`CLOSE_WAIT`] the process ends without closing: every
/// answered write is durable anyway, and the next start checks the file.
async fn close_store(service: Arc<Service>) {
    if service.store().is_shared() {
        return; // PostgreSQL: nothing to close beyond the connections, dropped on exit
    }
    let mut store = service.store_handle();
    drop(service);
    let waiting = Instant::now();
    let store = loop {
        match Arc::try_unwrap(store) {
            Ok(store) => break store,
            Err(shared) if waiting.elapsed() < CLOSE_WAIT => {
                store = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                tracing::warn!(wait_secs = CLOSE_WAIT.as_secs(), "the store is still in use; exiting without closing it (the next start checks the database)");
                return;
            }
        }
    };
    match tokio::task::spawn_blocking(move || store.close()).await {
        Ok(Ok(())) => tracing::info!("store closed"),
        Ok(Err(e)) => tracing::error!(error = %e, "could not close the store; the next start checks the database"),
        Err(_) => tracing::error!("closing the store panicked; the next start checks the database"),
    }
}

/// Panics are logged as one line with their location only: the default hook prints the
/// payload, and a payload can quote anything the panicking code held (request data,
/// secrets). Handler panics become JSON 500s in the API layer.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(%location, thread = thread.name().unwrap_or("-"), "panicked (message withheld from the log)");
    }));
}

/// Accepts until `shutdown` resolves, then lets every open connection finish its request
/// in flight (up to [`api::SHUTDOWN_GRACE`]).
async fn accept_loop(listener: TcpListener, app: axum::Router, limits: &ServerConfig, shutdown: impl Future<Output = ()>) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let idle = Duration::from_secs(limits.idle_timeout_secs.max(1));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs.max(1)))
        .keep_alive(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: at the cap, new connections queue in the backlog.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning or exiting.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, app.clone(), builder.clone(), idle, stop_rx.clone(), permit));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends: all slots back means drained.
    let drained = tokio::time::timeout(api::SHUTDOWN_GRACE, slots.acquire_many(max as u32)).await;
    if drained.is_err() {
        let open = max - slots.available_permits();
        tracing::warn!(open, grace_secs = api::SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; closing them");
    }
}

/// Serves one connection until the client closes it, a deadline closes it, or shutdown
/// has let its request in flight finish. Holds its slot (`_permit`) throughout.
async fn connection(
    stream: TcpStream,
    app: axum::Router,
    builder: http1::Builder,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let busy = seen.begin();
        let app = app.clone();
        async move {
            let _busy = busy;
            tower::ServiceExt::oneshot(app, req).await
        }
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // Header timeouts, resets, malformed requests: routine, not errors of ours.
                    tracing::debug!(error = %e, "connection ended");
                }
                break;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                // Finishes the request in flight, then closes; closes an idle one now.
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(activity.idle_deadline(idle).into()) => {
                if activity.is_idle(idle) {
                    // Nothing moved either way and no handler runs (e.g. a client that
                    // stopped reading its response): drop the socket.
                    tracing::debug!("closing idle connection");
                    break;
                }
            }
        }
    }
}

/// When bytes last moved on a connection, and how many of its requests are being handled.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity { base: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// When the connection counts as idle if nothing happens until then.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // A handler is running (bounded by the request timeout): look again later.
            return Instant::now() + idle;
        }
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.base.elapsed() >= Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

/// Marks a request as being handled until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records when bytes last moved.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// First dev start: a `dev` admin whose token is printed once.
fn bootstrap_dev_admin(service: &Service) -> Result<(), String> {
    let users = service.store().list_users().map_err(|e| e.to_string())?;
    if !users.is_empty() {
        return Ok(());
    }
    let (_, token) = service.add_user("bootstrap", "dev", Role::Admin).map_err(|e| e.to_string())?;
    tracing::warn!("DEV MODE: created admin user `dev`; its token is printed once below");
    println!("dev admin token (shown once): {}", token.token.expose_secret());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when first polled: a signal that arrives right after `listening on` (during
/// start-up) must not hit the default action and kill the process mid-way.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            async fn recv(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            let (term, int) = handlers;
            tokio::select! { _ = recv(term) => {}, _ = recv(int) => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested; finishing requests in flight");
    }
}
