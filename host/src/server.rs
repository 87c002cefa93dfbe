//! `credhost serve`: the HTTP server with graceful shutdown.

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::service::Service;
use crate::store::Role;

/// Serves until SIGINT/SIGTERM, then drains requests in flight.
pub async fn serve(config: Config) -> Result<(), String> {
    let started = std::time::Instant::now();
    let cfg = config.clone();
    let service: Arc<Service> =
        tokio::task::spawn_blocking(move || crate::app::service(&cfg)).await.map_err(|e| e.to_string())??;
    if config.keys.dev {
        bootstrap_dev_admin(&service)?;
    }
    // Declared users and credentials, before the first request can see them.
    let (svc, cfg) = (service.clone(), config.clone());
    tokio::task::spawn_blocking(move || crate::provision::reconcile(&svc, &cfg)).await.map_err(|e| e.to_string())??;
    let app = api::router(AppState::new(service.clone()), &config.server);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, types = service.types().len(), startup_ms = started.elapsed().as_millis() as u64, "credhost listening");
    // A line tests and scripts can wait for (the port may have been chosen by the OS).
    println!("listening on http://{addr}");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| e.to_string())?;
    tracing::info!("shut down cleanly");
    Ok(())
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

async fn shutdown_signal() {
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
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested; finishing requests in flight");
}
