//! `galley serve`: the HTTP API on a tokio runtime, the runner's workers beside it. SIGTERM or
//! SIGINT stops taking work, lets what runs finish for `drain` (when set; a second signal ends
//! that), cancels what still runs (within the grace period) and exits 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::ServeArgs;
use crate::api::{self, AppState};
use crate::config::serve::{ServeConfig, ServeFlags};
use crate::runner::Runner;

/// Runs the service until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<bool> {
    let flags = ServeFlags {
        config: args.config,
        listen: args.listen,
        data_dir: args.data_dir,
        projects: args.projects,
        store: std::env::var("GALLEY_STORE").ok(),
    };
    let token = std::env::var("GALLEY_API_TOKEN").ok();
    let config = ServeConfig::load(&flags, token.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: ServeConfig) -> anyhow::Result<bool> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    let grace = config.cancel_grace;
    let tokens = Arc::new(config.tokens.clone());
    let projects: Vec<String> = config.projects.keys().cloned().collect();
    let data_dir = config.data_dir.clone();
    let http = config.http.clone();
    let drain_for = config.drain;
    let runner = tokio::task::spawn_blocking(move || Runner::start(config))
        .await
        .context("the runner did not start")??;
    let max_connections = super::http::connection_budget(http.max_connections);
    let (app, _) = api::router(AppState {
        runner: runner.clone(),
        tokens: tokens.clone(),
        hosts: Arc::new(api::guard::Hosts::new(addr, http.allowed_hosts.as_deref())),
        streams: Arc::new(api::sse::StreamCount::new(
            http.max_streams,
            http.max_streams_per_token,
        )),
    });
    tracing::info!(%addr, data_dir = %data_dir.display(), ?projects, max_connections, "galley serve listening");
    // One line on stdout for whoever started us (scripts, tests): where to reach the service.
    println!("galley serve: listening on http://{addr}");
    if tokens.is_empty() {
        eprintln!("galley serve: no API token set: only loopback clients can reach this service");
    }

    let drain = drain_for;
    let shutdown = {
        let runner = runner.clone();
        async move {
            wait_for_signal().await;
            if !drain.is_zero() {
                tracing::info!(
                    deadline_s = drain.as_secs(),
                    "draining: no new builds; the running ones may finish (a second signal cancels them)"
                );
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (r, s) = (runner.clone(), stop.clone());
                let drained = tokio::task::spawn_blocking(move || r.drain(drain, &s));
                tokio::pin!(drained);
                let left = tokio::select! {
                    left = &mut drained => left.unwrap_or(0),
                    _ = wait_for_signal() => {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                        drained.await.unwrap_or(0)
                    }
                };
                if left > 0 {
                    tracing::warn!(
                        left,
                        "the drain ended with builds still running: cancelling them"
                    );
                }
            }
            tracing::info!("stopping: no new builds; cancelling the running ones");
            // Builds end first, so their event streams end and the server can finish.
            let r = runner.clone();
            let _ =
                tokio::task::spawn_blocking(move || r.shutdown(grace + Duration::from_secs(10)))
                    .await;
        }
    };
    // Streams of clients that keep a connection open cannot hold the exit for long.
    super::http::serve(
        listener,
        app,
        &http,
        max_connections,
        shutdown,
        Duration::from_secs(5),
    )
    .await;
    Ok(true)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
