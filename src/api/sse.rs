//! `GET /api/v1/builds/{id}/events`: Server-Sent Events. What a client missed comes from the
//! store (after `Last-Event-ID`), then the live stream follows; ids only grow, so nothing is
//! sent twice. A finished build replays everything and the stream ends with its `end` event.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use super::{blocking, ApiError, AppState};
use crate::store::{Store, StoredEvent};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this event id (what `Last-Event-ID` says; the header wins when both are given).
    pub after: Option<i64>,
}

const PAGE: usize = 500;

fn sse_event(e: &StoredEvent) -> Event {
    // The payload is JSON: no newline in it can forge another field or event.
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(e.data.as_str())
}

/// Sends what the store holds after `*last`; returns whether the `end` event was among it.
async fn replay(
    store: &Arc<Store>,
    id: i64,
    last: &mut i64,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<bool, ()> {
    loop {
        let after = *last;
        let s = store.clone();
        let batch = tokio::task::spawn_blocking(move || s.events_after(id, after, PAGE))
            .await
            .map_err(|_| ())?
            .map_err(|e| tracing::error!(build = id, "replay: {e}"))?;
        for e in &batch {
            tx.send(Ok(sse_event(e))).await.map_err(|_| ())?;
            *last = e.seq;
            if e.kind == "end" {
                return Ok(true);
            }
        }
        if batch.len() < PAGE {
            return Ok(false);
        }
    }
}

async fn follow(
    store: Arc<Store>,
    id: i64,
    mut last: i64,
    live: Option<broadcast::Receiver<Arc<StoredEvent>>>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), ()> {
    // Subscribed before the replay: whatever is written meanwhile arrives live too, and the
    // ids sort out the overlap.
    if replay(&store, id, &mut last, &tx).await? {
        return Ok(());
    }
    let Some(mut live) = live else {
        return Ok(());
    };
    loop {
        match live.recv().await {
            Ok(e) if e.seq <= last => continue,
            Ok(e) => {
                tx.send(Ok(sse_event(&e))).await.map_err(|_| ())?;
                last = e.seq;
                if e.kind == "end" {
                    return Ok(());
                }
            }
            // Too slow for the live stream: catch up from the store, then go on.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if replay(&store, id, &mut last, &tx).await? {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                replay(&store, id, &mut last, &tx).await?;
                return Ok(());
            }
        }
    }
}

/// Follow a build: `log`, `stage`, `status`, `source`, `report`, `dropped` and a final `end`
/// event, each with an increasing id. Reconnect with `Last-Event-ID` to get exactly what was
/// missed. Comments every few seconds keep proxies from closing an idle stream.
#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}/events",
    tag = "builds",
    params(("id" = i64, Path, description = "Build id"), EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "The last event id received")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such build", body = super::error::ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_last_event_id",
                    "Last-Event-ID must be an event id (a number)",
                )
            })?,
        None => q.after.unwrap_or(0),
    };
    let store = state.runner.store().clone();
    let s = store.clone();
    blocking(move || {
        s.get_build(id)
            .map_err(ApiError::internal)?
            .map(|_| ())
            .ok_or_else(|| ApiError::not_found(format!("no build {id}")))
    })
    .await?;
    let live = state.runner.hub().subscribe(id);
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        // An error means the client went away or the store failed (logged): the stream ends.
        let _ = follow(store, id, last, live, tx).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(state.runner.config().heartbeat)))
}
