//! `GET /api/v1/builds/{id}/events`: Server-Sent Events. What a client missed comes from the
//! store (after `Last-Event-ID`), then the live stream follows; ids only grow, so nothing is
//! sent twice. A finished build replays everything and the stream ends with its `end` event.
//! A build that runs on another worker of the fleet (or is still queued) is followed from the
//! store: each wake-up (a notice, or a second without one) replays what is new.

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

/// Open event streams, in all and per token, against their limits (`[http] max_streams`,
/// `max_streams_per_token`): one token cannot hold every stream the service can serve.
pub struct StreamCount {
    max: usize,
    max_per_token: usize,
    open: std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>,
}

/// One open stream; dropping it (the client went away, the stream ended) frees its place.
pub struct StreamSlot {
    count: Arc<StreamCount>,
    who: String,
}

impl StreamCount {
    pub fn new(max: usize, max_per_token: usize) -> StreamCount {
        StreamCount {
            max,
            max_per_token,
            open: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, std::collections::HashMap<String, usize>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many streams are open.
    pub fn open(&self) -> usize {
        self.lock().0
    }

    /// A place for one more stream of `who`, or the answer that says which limit is reached.
    pub fn acquire(self: &Arc<Self>, who: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.lock();
        let mine = open.1.get(who).copied().unwrap_or(0);
        let busy = |status, code: &str, message: String| {
            let mut e = ApiError::new(status, code, message)
                .hint("close event streams you no longer read; a finished build's events are also at /api/v1/builds/{id}/log");
            e.retry_after = Some(10);
            e
        };
        if mine >= self.max_per_token {
            return Err(busy(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!("this token already holds {mine} event streams (max_streams_per_token)"),
            ));
        }
        if open.0 >= self.max {
            return Err(busy(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "streams_full",
                format!(
                    "the service already serves {} event streams (max_streams)",
                    open.0
                ),
            ));
        }
        open.0 += 1;
        *open.1.entry(who.to_string()).or_default() += 1;
        Ok(StreamSlot {
            count: self.clone(),
            who: who.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.count.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.who);
            }
        }
    }
}

fn sse_event(e: &StoredEvent) -> Event {
    // The payload is JSON: no newline in it can forge another field or event.
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.as_str())
        .data(e.data.as_str())
}

/// Sends what the store holds after `*last`; returns whether the `end` event was among it.
async fn replay(
    store: &Arc<dyn Store>,
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

/// Follows a build that does not run here: the store, read again at every wake-up for this
/// build and at least every second, until its `end` event.
async fn follow_store(
    store: &Arc<dyn Store>,
    id: i64,
    last: &mut i64,
    mut wakes: broadcast::Receiver<i64>,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), ()> {
    loop {
        if replay(store, id, last, tx).await? {
            return Ok(());
        }
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                w = wakes.recv() => match w {
                    Ok(w) if w != id => continue,
                    // Ours, or missed some: read the store.
                    _ => break,
                },
                _ = &mut deadline => break,
                _ = tx.closed() => return Err(()),
            }
        }
    }
}

async fn follow(
    store: Arc<dyn Store>,
    id: i64,
    mut last: i64,
    live: Option<broadcast::Receiver<Arc<StoredEvent>>>,
    wakes: broadcast::Receiver<i64>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), ()> {
    // Subscribed before the replay: whatever is written meanwhile arrives live too, and the
    // ids sort out the overlap.
    if replay(&store, id, &mut last, &tx).await? {
        return Ok(());
    }
    let Some(mut live) = live else {
        return follow_store(&store, id, &mut last, wakes, &tx).await;
    };
    loop {
        // A client that went away ends the task now, not at the build's next event.
        let next = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return Err(()),
        };
        match next {
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
        (status = 429, description = "This token holds max_streams_per_token streams already", body = super::error::ErrorBody),
        (status = 503, description = "The service serves max_streams streams already", body = super::error::ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    axum::Extension(who): axum::Extension<super::Principal>,
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
    let slot = state.streams.acquire(&who.0)?;
    let wakes = state.runner.hub().wakes();
    let live = state.runner.hub().subscribe(id);
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        // An error means the client went away or the store failed (logged): the stream ends.
        let _ = follow(store, id, last, live, wakes, tx).await;
    });
    // The slot lives as long as the response body: hyper drops it when the client is gone.
    let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), move |e| {
        let _held = &slot;
        e
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(state.runner.config().heartbeat)))
}
