//! Build history: the only module that knows SQL. `Store` is what the runner and the API ask;
//! `SqliteStore` (one file in the data directory, the embedded default) answers it.
//!
//! Builds and their events live here; a build's status only moves forward (queued → running →
//! succeeded | failed | cancelled | interrupted), checked by a read of the current status in the
//! same transaction as the UPDATE. Events have a per-build sequence number, the SSE id. A log over
//! its cap keeps its head and its tail; the dropped middle is remembered as a range and replayed
//! as one `dropped` marker event.

#[doc(hidden)]
pub mod conformance;
pub mod pg;
pub mod sqlite;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use pg::PgStore;
pub use sqlite::SqliteStore;

/// A build's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The service stopped (a crash, a kill) while the build was queued or running.
    Interrupted,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 6] = [
        BuildStatus::Queued,
        BuildStatus::Running,
        BuildStatus::Succeeded,
        BuildStatus::Failed,
        BuildStatus::Cancelled,
        BuildStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Queued => "queued",
            BuildStatus::Running => "running",
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
            BuildStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<BuildStatus> {
        BuildStatus::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Whether the build has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Running)
    }

    /// The statuses a build may move to this one from.
    fn predecessors(self) -> &'static [&'static str] {
        match self {
            BuildStatus::Queued => &[],
            BuildStatus::Running => &["queued"],
            _ => &["queued", "running"],
        }
    }

    /// Whether build `id` may move to this status from `current` (its stored status, read in
    /// the transaction that would write the move); the refusal every backend answers.
    fn may_follow(self, id: i64, current: String) -> Result<(), StoreError> {
        if self.predecessors().contains(&current.as_str()) {
            Ok(())
        } else {
            Err(StoreError::Transition {
                id,
                from: current,
                to: self.as_str().into(),
            })
        }
    }
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the build database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the build database: {}", pg::detail(.0))]
    Postgres(#[from] postgres::Error),
    #[error("cannot reach the store {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("another galley serve is worker {worker} on the store {url}: give each instance its own worker_name")]
    WorkerInUse { url: String, worker: String },
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("build {id} cannot move from {from} to {to}")]
    Transition { id: i64, from: String, to: String },
    #[error("no build {0}")]
    NoBuild(i64),
    #[error("build {id} has an unreadable request: {source}")]
    BadRequest { id: i64, source: serde_json::Error },
    #[error("the build database did not accept {pragma} = {wanted} (it answered {got}): keep data_dir on a local file system")]
    Pragma {
        pragma: &'static str,
        wanted: &'static str,
        got: String,
    },
    #[error("the database's schema is version {found}, newer than this galley knows ({known}): run a newer galley, or point the service at another store")]
    NewerSchema { found: i64, known: i64 },
}

/// A stored event: its sequence number (the SSE id), kind and JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: String,
    pub data: String,
}

/// What a stored event costs besides its kind and data: the build id, the sequence number and
/// the row's header in SQLite's b-tree (an estimate: SQLite packs small integers).
pub const EVENT_OVERHEAD: u64 = 16;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub data: String,
    /// Log bytes (for the cap); 0 for other events.
    pub log_bytes: u64,
}

/// A build row.
#[derive(Debug, Clone, Serialize)]
pub struct BuildRow {
    pub id: i64,
    pub project: String,
    pub status: BuildStatus,
    /// The request as accepted (JSON).
    pub request: serde_json::Value,
    pub started_by: String,
    pub process_tag: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub commit: Option<String>,
    pub dirty: Option<bool>,
    pub tools: Option<serde_json::Value>,
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
    pub cancelled_by: Option<String>,
    pub forced_kill: Option<bool>,
    pub output_dir: Option<String>,
    pub dropped_lines: i64,
    pub dropped_bytes: i64,
    /// The worker that claimed it (absent while queued, and for builds before the fleet).
    pub worker: Option<String>,
    /// Who asked for a cancel that the build's worker has not acted on yet.
    pub cancel_requested: Option<String>,
}

/// What creating a build did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new build, queued.
    New(i64),
    /// The same idempotency key and body were seen before: that build.
    Replayed(i64),
    /// The idempotency key was used before with another body.
    KeyConflict,
    /// The queue holds `max_queued` builds already.
    QueueFull,
}

/// What a build was asked for: stored as the build's request, replayed by a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildInput {
    pub project: String,
    pub variants: Vec<String>,
    pub version: String,
    pub push: bool,
    /// The git ref to build (git projects only).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// A repro: the build whose recorded inputs this one builds again and compares with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repro_of: Option<i64>,
    /// A retry: the build that was interrupted when its worker died (`retry_interrupted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<i64>,
    /// A rebase: the build whose images this one moves onto the project's base, no compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebase_of: Option<i64>,
}

impl BuildRow {
    /// What the build asked for, typed.
    pub fn input(&self) -> Result<BuildInput, StoreError> {
        serde_json::from_value(self.request.clone()).map_err(|source| StoreError::BadRequest {
            id: self.id,
            source,
        })
    }
}

/// A new build to record.
pub struct NewBuild<'a> {
    pub project: &'a str,
    pub request: &'a BuildInput,
    /// sha256 of the request, for idempotency.
    pub request_hash: &'a str,
    pub started_by: &'a str,
    /// (principal, key) of an `Idempotency-Key`.
    pub idempotency: Option<(&'a str, &'a str)>,
    pub max_queued: usize,
    /// The prefix of the process tag (`galley-<instance>`); the id is appended.
    pub tag_prefix: &'a str,
    /// The `status` event announcing the queued build.
    pub queued_event: &'a str,
}

/// Filters for the history.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub limit: usize,
    pub before: Option<i64>,
    pub project: Option<String>,
    pub status: Option<BuildStatus>,
}

/// Facts to record when a build starts running.
#[derive(Debug, Clone, Default)]
pub struct Started {
    pub commit: Option<String>,
    pub dirty: Option<bool>,
    pub output_dir: Option<String>,
}

/// Facts to record when a build ends.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub tools: Option<serde_json::Value>,
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
    pub cancelled_by: Option<String>,
    pub forced_kill: Option<bool>,
}

/// A worker as the store knows it: its heartbeat, its running builds, the projects it built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRow {
    pub name: String,
    pub version: String,
    pub started_at: i64,
    pub last_seen: i64,
    /// Ids of the builds it runs now.
    pub running: Vec<i64>,
    /// Projects it built successfully (its target directories are warm), most recent first.
    pub warm: Vec<String>,
}

/// A claim's terms: who claims, for how long, and how long a build waits for the worker that
/// built its project last (a worker counts as alive when seen within `lease`).
#[derive(Debug, Clone, Copy)]
pub struct ClaimTerms<'a> {
    pub worker: &'a str,
    pub lease: Duration,
    pub sticky_delay: Duration,
}

/// A running build held by a worker, as its heartbeat renews it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    /// A cancel asked for on another instance, not acted on yet.
    pub cancel_requested: Option<String>,
}

/// A running build whose worker's lease ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapsed {
    pub id: i64,
    pub worker: String,
    pub process_tag: String,
    /// When the worker last renewed its lease (ms since the epoch), if it ever registered.
    pub last_seen: Option<i64>,
}

/// A wake-up from another instance (PostgreSQL's LISTEN/NOTIFY): what to look at again in the
/// store. Payloads stay small; the store holds the facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A build was queued.
    Queued,
    /// A build has new events.
    Events(i64),
    /// A cancel was asked for a build.
    Cancel(i64),
}

impl Notice {
    /// The payload (`q`, `e:ID`, `c:ID`).
    pub fn payload(self) -> String {
        match self {
            Notice::Queued => "q".into(),
            Notice::Events(id) => format!("e:{id}"),
            Notice::Cancel(id) => format!("c:{id}"),
        }
    }

    pub fn parse(s: &str) -> Option<Notice> {
        match s.split_once(':') {
            None if s == "q" => Some(Notice::Queued),
            Some(("e", id)) => id.parse().ok().map(Notice::Events),
            Some(("c", id)) => id.parse().ok().map(Notice::Cancel),
            _ => None,
        }
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// The build history and event log, as the runner and the API use it. Every write that moves a
/// status reads the current one in the same transaction and refuses a move that is not forward.
pub trait Store: Send + Sync {
    /// A value kept across restarts (created with `init` the first time).
    fn meta(&self, key: &str, init: &dyn Fn() -> String) -> Result<String, StoreError>;
    /// Records a queued build (with its first event), honouring the idempotency key and the
    /// queue limit, in one transaction.
    fn create_build(&self, b: &NewBuild<'_>) -> Result<Created, StoreError>;
    /// Appends events, and (when given) moves the build's status in the same transaction;
    /// returns the stored events with their sequence numbers.
    fn append(
        &self,
        id: i64,
        events: &[NewEvent],
        status: Option<(BuildStatus, StatusFacts<'_>)>,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Records the commit a build's sources are at, and whether they were dirty.
    fn set_source(
        &self,
        id: i64,
        commit: Option<&str>,
        dirty: Option<bool>,
    ) -> Result<(), StoreError>;
    /// Drops stored log events (the oldest of a log's tail), remembering the gap.
    fn drop_events(&self, id: i64, seqs: &[i64], bytes: u64) -> Result<(), StoreError>;
    /// Events after `after`, at most `limit`, with the `dropped` marker where ids jump.
    fn events_after(
        &self,
        id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Whether the store takes writes now.
    fn probe_write(&self) -> Result<(), StoreError>;
    /// Housekeeping after a build (SQLite: fold and truncate the WAL).
    fn checkpoint(&self) -> Result<(), StoreError>;
    /// A build's `stage` events, in order.
    fn stage_events(&self, id: i64) -> Result<Vec<StoredEvent>, StoreError>;
    /// The data of a build's last event of `kind`.
    fn last_event(&self, id: i64, kind: &str) -> Result<Option<String>, StoreError>;
    /// The newest repro of build `of`.
    fn latest_repro(&self, of: i64) -> Result<Option<BuildRow>, StoreError>;
    fn get_build(&self, id: i64) -> Result<Option<BuildRow>, StoreError>;
    /// History, newest first.
    fn list_builds(&self, f: &ListFilter) -> Result<Vec<BuildRow>, StoreError>;
    /// Ids of queued builds, oldest first.
    fn queued(&self) -> Result<Vec<i64>, StoreError>;
    /// The versions of the project's succeeded builds.
    fn released_versions(&self, project: &str) -> Result<Vec<String>, StoreError>;
    /// Removes a finished build and its events; returns its output directory, if any.
    fn delete_build(&self, id: i64) -> Result<Option<String>, StoreError>;
    /// (id, process tag) of every build queued or running, oldest first.
    fn unfinished(&self) -> Result<Vec<(i64, String)>, StoreError>;
    /// (id, process tag) of the running builds `worker` claimed, and of those running from
    /// before the fleet (no worker): what a worker that starts again must stop.
    fn held_by(&self, worker: &str) -> Result<Vec<(i64, String)>, StoreError>;
    /// Marks the builds `worker` held interrupted (with `make_events`), each in its own
    /// transaction through `append`; returns (id, process tag) of each it marked. A build another
    /// worker marked first is skipped.
    fn interrupt_held(
        &self,
        worker: &str,
        reason: &str,
        make_events: &dyn Fn(i64) -> Vec<NewEvent>,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let mut marked = Vec::new();
        for (id, tag) in self.held_by(worker)? {
            let facts = Finished {
                error: Some(reason.to_string()),
                ..Default::default()
            };
            match self.append(
                id,
                &make_events(id),
                Some((BuildStatus::Interrupted, StatusFacts::Finished(&facts))),
            ) {
                Ok(_) => marked.push((id, tag)),
                Err(StoreError::Transition { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(marked)
    }
    /// Claims the oldest queued build this worker may take, moving it to running with
    /// `start(id)`'s events and facts in the same transaction: a build whose project another
    /// live worker built last waits `sticky_delay` for it. No build is claimed twice (PostgreSQL:
    /// `FOR UPDATE SKIP LOCKED`; SQLite: one writer).
    fn claim(
        &self,
        terms: &ClaimTerms<'_>,
        start: &dyn Fn(i64) -> (Vec<NewEvent>, Started),
    ) -> Result<Option<(BuildRow, Vec<StoredEvent>)>, StoreError>;
    /// Registers `worker` (first) or renews its heartbeat and the leases of its running builds;
    /// returns those builds with any cancel asked for them.
    fn heartbeat(
        &self,
        worker: &str,
        version: &str,
        lease: Duration,
        first: bool,
    ) -> Result<Vec<Held>, StoreError>;
    /// Marks interrupted every running build whose lease ran out (its worker stopped renewing
    /// it), with `make`'s events and facts, in one transaction; returns them.
    fn reap(
        &self,
        make: &dyn Fn(&Lapsed) -> (Vec<NewEvent>, Finished),
    ) -> Result<Vec<Lapsed>, StoreError>;
    /// Asks the worker running build `id` to cancel it (it acts on its next heartbeat or
    /// notice); a build that is not running is left alone.
    fn request_cancel(&self, id: i64, by: &str) -> Result<(), StoreError>;
    /// The workers the store knows, by name.
    fn workers(&self) -> Result<Vec<WorkerRow>, StoreError>;
    /// Waits at most `timeout` for notices from other instances (SQLite has no other instance:
    /// it only waits).
    fn wait_notices(&self, timeout: Duration) -> Vec<Notice> {
        std::thread::sleep(timeout);
        Vec::new()
    }
    /// Finished builds past the retention limits, oldest first.
    fn expired(&self, max_builds: usize, max_age: Duration) -> Result<Vec<i64>, StoreError>;
    /// Forgets idempotency keys older than `age`.
    fn expire_keys(&self, age: Duration) -> Result<usize, StoreError>;
    /// How many builds have each status.
    fn count_by_status(&self) -> Result<Vec<(BuildStatus, i64)>, StoreError>;
}

/// The `dropped` marker that stands for a log's dropped middle in a replay after `after`, when
/// any of the gap lies after it. Its id is the gap's last id (its first, for a database written
/// before the end was kept), so a reader resuming inside the gap is told and one resuming after
/// the marker is not told twice.
pub fn dropped_marker(
    after: i64,
    from: Option<i64>,
    to: Option<i64>,
    lines: i64,
    bytes: i64,
) -> Option<StoredEvent> {
    let from = from?;
    let at = to.unwrap_or(from);
    if at <= after {
        return None;
    }
    let mut data = serde_json::json!({
        "lines": lines,
        "bytes": bytes,
        "message": format!("[galley: {lines} log lines ({bytes} bytes) dropped here: the log passed its cap (log_cap_bytes); its head and tail are kept]"),
    });
    if let Some(to) = to {
        data["from"] = from.into();
        data["to"] = to.into();
    }
    Some(StoredEvent {
        seq: at,
        kind: "dropped".into(),
        data: data.to_string(),
    })
}

/// Places `marker` among `rows` (sorted by id, at most `limit`): before the first event after
/// it, or at the end when the page is not full.
pub fn with_marker(
    rows: Vec<StoredEvent>,
    mut marker: Option<StoredEvent>,
    limit: usize,
) -> Vec<StoredEvent> {
    let mut out = Vec::with_capacity(rows.len() + 1);
    for e in rows {
        if marker.as_ref().is_some_and(|m| m.seq < e.seq) {
            out.push(marker.take().expect("checked"));
        }
        out.push(e);
    }
    // A gap at the very end (the tail was still being trimmed) is reported too.
    if out.len() < limit {
        out.extend(marker);
    }
    out
}

/// The facts that go with a status change.
#[derive(Debug, Clone)]
pub enum StatusFacts<'a> {
    Started(&'a Started),
    Finished(&'a Finished),
}
