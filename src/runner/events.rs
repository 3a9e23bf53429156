//! A build's events on their way out: batched into the store, then announced to live
//! subscribers (written before announced, in sequence order), with the stored log capped to its
//! head and tail. A batch the store refuses (a restart of PostgreSQL) is kept and written with the
//! next one, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use crate::oci::time::rfc3339_millis;
use crate::pipeline::{EventSink, LogLine, StageEvent, StageStatus, Stream};
use crate::store::{BuildStatus, NewEvent, StatusFacts, Store, StoreError, StoredEvent};

use super::event::{BuildEvent, LogEvent, StageChange};
use super::metrics::Metrics;

/// Lines longer than this are split (on a character boundary) into several log events.
pub const MAX_LINE: usize = 8 << 10;
/// Log events gathered before they are written (a state change writes at once).
const BATCH: usize = 64;
/// Events kept while the store refuses them; past this the oldest are given up (and the record
/// says the log is incomplete).
const MAX_PENDING: usize = 50_000;
/// The longest a log line waits in a batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Live subscribers of the builds that run here, and wake-ups for followers of builds that run
/// elsewhere (or are still queued): those read the store when woken.
pub struct Hub {
    senders: Mutex<HashMap<i64, broadcast::Sender<Arc<StoredEvent>>>>,
    wakes: broadcast::Sender<i64>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            senders: Mutex::default(),
            wakes: broadcast::channel(4096).0,
        }
    }
}

impl Hub {
    /// Says that build `id` has new events in the store.
    pub fn wake(&self, id: i64) {
        let _ = self.wakes.send(id);
    }

    /// Wake-ups of every build (filtered by the follower).
    pub fn wakes(&self) -> broadcast::Receiver<i64> {
        self.wakes.subscribe()
    }

    /// Opens a build's channel (when it is queued).
    pub fn open(&self, id: i64) {
        let (tx, _) = broadcast::channel(1024);
        self.lock().insert(id, tx);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, broadcast::Sender<Arc<StoredEvent>>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows a build's new events; `None` when it has ended (everything is in the store).
    pub fn subscribe(&self, id: i64) -> Option<broadcast::Receiver<Arc<StoredEvent>>> {
        self.lock().get(&id).map(|tx| tx.subscribe())
    }

    pub fn publish(&self, id: i64, events: &[StoredEvent]) {
        if let Some(tx) = self.lock().get(&id) {
            for e in events {
                // No receiver is fine: nobody is watching.
                let _ = tx.send(Arc::new(e.clone()));
            }
        }
        if !events.is_empty() {
            self.wake(id);
        }
    }

    /// Closes a build's channel after its `end` event: followers finish.
    pub fn close(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// How many live followers the running builds have.
    pub fn followers(&self) -> usize {
        self.lock().values().map(|tx| tx.receiver_count()).sum()
    }
}

/// The current time, as events carry it.
pub fn ts() -> String {
    rfc3339_millis(SystemTime::now())
}

/// Writes events and state changes, then announces them.
pub fn record(
    store: &dyn Store,
    hub: &Hub,
    id: i64,
    events: &[NewEvent],
    status: Option<(BuildStatus, StatusFacts<'_>)>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let stored = store.append(id, events, status)?;
    hub.publish(id, &stored);
    Ok(stored)
}

struct LogState {
    pending: Vec<NewEvent>,
    oldest_pending: Option<Instant>,
    head_bytes: u64,
    /// Stored log events past the head: (seq, bytes), oldest first.
    tail: VecDeque<(i64, u64)>,
    tail_bytes: u64,
    failed: Option<String>,
}

/// The event sink of one running build: the pipeline's log lines and stage changes, and the
/// runner's own lines.
pub struct BuildLog {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    id: i64,
    head_cap: u64,
    tail_cap: u64,
    state: Mutex<LogState>,
}

impl BuildLog {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        id: i64,
        cap: u64,
    ) -> BuildLog {
        BuildLog {
            store,
            hub,
            metrics,
            id,
            head_cap: cap / 2,
            tail_cap: cap - cap / 2,
            state: Mutex::new(LogState {
                pending: Vec::new(),
                oldest_pending: None,
                head_bytes: 0,
                tail: VecDeque::new(),
                tail_bytes: 0,
                failed: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line of the runner's own (source checkout, queue), not tied to a variant.
    pub fn say(&self, stage: &str, line: &str) {
        self.push_log(stage, Stream::Galley, None, line);
    }

    /// Queues a line (split when it is long) for the next batch.
    fn push_log(&self, stage: &str, stream: Stream, unit: Option<(&str, &str)>, line: &str) {
        let mut st = self.lock();
        let now = ts();
        for chunk in split_line(line) {
            let e = BuildEvent::Log(LogEvent {
                ts: now.clone(),
                stage: stage.to_string(),
                stream,
                variant: unit.map(|(v, _)| v.to_string()),
                target: unit.map(|(_, t)| t.to_string()),
                line: chunk.to_string(),
            });
            st.pending.push(e.to_new());
        }
        st.oldest_pending.get_or_insert_with(Instant::now);
        if st.pending.len() >= BATCH
            || st
                .oldest_pending
                .is_some_and(|t| t.elapsed() >= FLUSH_EVERY)
        {
            let _ = self.flush_locked(&mut st);
        }
    }

    /// Writes what is pending (and a state change with it), then announces it.
    pub fn flush(&self) {
        let mut st = self.lock();
        let _ = self.flush_locked(&mut st);
    }

    /// Writes pending lines, then `events` with an optional status change, in order. Events
    /// without a status change that the store refuses wait with the pending lines for the next
    /// write; a status change is the caller's to retry (the pending lines go first then too).
    pub fn state_change(
        &self,
        events: &[BuildEvent],
        status: Option<(BuildStatus, StatusFacts<'_>)>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut st = self.lock();
        let events: Vec<NewEvent> = events.iter().map(BuildEvent::to_new).collect();
        if let Err(e) = self.flush_locked(&mut st) {
            if status.is_none() {
                st.pending.extend(events);
                return Ok(Vec::new());
            }
            return Err(e);
        }
        match record(
            self.store.as_ref(),
            &self.hub,
            self.id,
            &events,
            status.clone(),
        ) {
            Ok(stored) => Ok(stored),
            Err(e @ StoreError::Transition { .. }) => Err(e),
            Err(e) if status.is_none() => {
                tracing::warn!(
                    build = self.id,
                    "cannot store events yet (kept for the next write): {e}"
                );
                st.pending.extend(events);
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the pending events. On a refusal they stay pending, in order, for the next try.
    fn flush_locked(&self, st: &mut LogState) -> Result<(), StoreError> {
        st.oldest_pending = None;
        if st.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut st.pending);
        let stored = match record(self.store.as_ref(), &self.hub, self.id, &pending, None) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    build = self.id,
                    "cannot store log lines yet (kept for the next write): {e}"
                );
                st.pending = pending;
                if st.pending.len() > MAX_PENDING {
                    let over = st.pending.len() - MAX_PENDING;
                    st.pending.drain(..over);
                    st.failed.get_or_insert_with(|| {
                        format!("{over} events were given up while the store refused writes: {e}")
                    });
                }
                return Err(e);
            }
        };
        let mut drop = Vec::new();
        let mut dropped_bytes = 0;
        for (e, n) in stored.iter().zip(&pending) {
            if n.log_bytes == 0 {
                continue;
            }
            if st.tail.is_empty() && st.head_bytes + n.log_bytes <= self.head_cap {
                st.head_bytes += n.log_bytes;
                continue;
            }
            st.tail.push_back((e.seq, n.log_bytes));
            st.tail_bytes += n.log_bytes;
            while st.tail_bytes > self.tail_cap {
                let Some((seq, bytes)) = st.tail.pop_front() else {
                    break;
                };
                st.tail_bytes -= bytes;
                drop.push(seq);
                dropped_bytes += bytes;
            }
        }
        if let Err(e) = self.store.drop_events(self.id, &drop, dropped_bytes) {
            tracing::error!(build = self.id, "cannot trim the log: {e}");
        }
        Ok(())
    }

    /// Why storing the log failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }
}

/// Splits a line into pieces of at most `MAX_LINE` bytes, on character boundaries.
pub fn split_line(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

impl EventSink for BuildLog {
    fn log(&self, line: &LogLine<'_>) {
        self.push_log(
            line.stage.as_str(),
            line.stream,
            Some((line.variant, line.target.triple())),
            line.message,
        );
    }

    fn stage(&self, e: &StageEvent<'_>) {
        if let (Some(ms), StageStatus::Succeeded) = (e.ms, e.status) {
            self.metrics.stage_duration(e.stage, ms);
        }
        if let (Some(c), StageStatus::Succeeded) = (e.cache, e.status) {
            self.metrics.stage_cache(e.stage, c.used);
        }
        let change = BuildEvent::Stage(StageChange {
            ts: ts(),
            variant: e.variant.to_string(),
            target: e.target.triple().to_string(),
            stage: e.stage,
            status: e.status,
            ms: e.ms,
            detail: e.detail.map(str::to_string),
            cache: e.cache.map(|c| c.used),
            cache_key: e.cache.map(|c| c.key.clone()),
        });
        if let Err(err) = self.state_change(&[change], None) {
            tracing::error!(build = self.id, "cannot store a stage event: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_split_on_character_boundaries() {
        let line = "é".repeat(MAX_LINE); // 2 bytes each
        let parts = split_line(&line);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= MAX_LINE));
        assert_eq!(parts.concat(), line);
        assert_eq!(split_line(""), [""]);
    }

    #[test]
    fn a_log_past_its_cap_keeps_head_and_tail() {
        let dir = std::env::temp_dir().join(format!("galley-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::open(&dir).unwrap());
        let req = crate::store::BuildInput {
            project: "p".into(),
            variants: vec![],
            version: "1.0.0".into(),
            push: false,
            git_ref: None,
            repro_of: None,
            retry_of: None,
            rebase_of: None,
        };
        let crate::store::Created::New(id) = store
            .create_build(&crate::store::NewBuild {
                project: "p",
                request: &req,
                request_hash: "h",
                started_by: "t",
                idempotency: None,
                max_queued: 5,
                tag_prefix: "x",
                queued_event: "{}",
            })
            .unwrap()
        else {
            panic!()
        };
        let log = BuildLog::new(
            store.clone(),
            Arc::new(Hub::default()),
            Arc::new(Metrics::new()),
            id,
            4096,
        );
        for i in 0..1000 {
            log.say("compile", &format!("line {i:04} {}", "x".repeat(40)));
        }
        log.say("compile", "error: the last line holds the error");
        log.flush();
        let events = store.events_after(id, 0, 10_000).unwrap();
        let lines: Vec<String> = events
            .iter()
            .filter(|e| e.kind == "log")
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["line"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(lines[0].starts_with("line 0000"));
        assert_eq!(
            lines.last().unwrap(),
            "error: the last line holds the error"
        );
        let stored: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(stored <= 4096, "{stored}");
        let marker = events
            .iter()
            .find(|e| e.kind == "dropped")
            .expect("a marker");
        let m: serde_json::Value = serde_json::from_str(&marker.data).unwrap();
        assert_eq!(m["lines"].as_u64().unwrap() as usize + lines.len(), 1001);
        // Ids increase strictly through head, marker and tail.
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}
