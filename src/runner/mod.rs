//! The service's runner: a queue of builds, worker threads that run the pipeline, cancel handles
//! that reach every child process, events written to the store before they are announced, and
//! the bookkeeping around them (restart recovery, retention, metrics).
//!
//! The store is the truth: a build is queued by writing it, starts by moving its status forward
//! (which fails if a cancel got there first) and ends with one write of its outcome and its
//! `end` event.

pub mod event;
pub mod events;
pub mod lock;
pub mod metrics;
mod rebase;
pub mod source;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::config::serve::{Project, ServeConfig};
use crate::pipeline::report::Report;
use crate::pipeline::{self, Context};
use crate::repro;
use crate::spec::{BuildRequest, BuildSpec};
use crate::store::{
    now_ms, BuildRow, BuildStatus, ClaimTerms, Created, Finished, Lapsed, NewBuild, Notice,
    Started, StatusFacts, Store, StoreError, WorkerRow,
};
use crate::toolchain::{CargoZigbuild, CompileSlots, Limited};
use event::{BuildEvent, End, SourceFacts, StatusChange};
use events::{ts, BuildLog, Hub};
use metrics::Metrics;

pub use crate::store::BuildInput;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no build {0}")]
    NotFound(i64),
    #[error("build {id} has already {status}")]
    Finished { id: i64, status: BuildStatus },
    #[error("build {id} is {status}: wait for it to end or cancel it first")]
    NotFinished { id: i64, status: BuildStatus },
    #[error("build {id} cannot be reproduced: {why}")]
    NotReproducible { id: i64, why: String },
    #[error("build {id} cannot be rebased: {why}")]
    NotRebasable { id: i64, why: String },
    #[error("the queue is full ({0} builds waiting)")]
    QueueFull(usize),
    #[error("the Idempotency-Key was used before with a different request")]
    KeyConflict,
    #[error("the service is shutting down and takes no new builds")]
    ShuttingDown,
    #[error("cannot start the runner: {0}")]
    Start(String),
    #[error(transparent)]
    Locked(#[from] lock::LockError),
}

/// The answer to a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    New(i64),
    /// The same Idempotency-Key and body as an earlier request: that build.
    Replayed(i64),
}

/// The answer to a cancel.
#[derive(Debug, Clone)]
pub enum CancelReply {
    /// The build has ended as cancelled (now or earlier).
    Cancelled(BuildRow),
    /// The cancel was sent; the build is still stopping.
    Stopping(BuildRow),
}

struct Inner {
    config: ServeConfig,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// Wakes idle workers (a build was queued here or elsewhere, or the service stops); the
    /// queue itself is the store's.
    wake: Mutex<u64>,
    wake_cv: Condvar,
    running: Mutex<HashMap<i64, Cancel>>,
    /// Who asked each running build to stop.
    cancelled_by: Mutex<HashMap<i64, String>>,
    slots: CompileSlots,
    accepting: AtomicBool,
    stopping: AtomicBool,
    tag_prefix: String,
    /// Builds whose outcome could not be written yet, and why (a full disk): `/readyz` says so.
    unrecorded: Mutex<HashMap<i64, String>>,
    /// Held for the life of the runner: no second service recovers (kills) our builds.
    _data_lock: lock::DataDirLock,
    /// The fleet thread (heartbeat, leases, notices) runs while this is false.
    fleet_done: AtomicBool,
}

/// The runner: cheap to clone, shared by the API's handlers.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The fleet thread: it renews leases until the workers are done, then stops.
    fleet: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut buf);
    }
    hex::encode(buf)
}

impl Runner {
    /// Opens the store, marks builds a crash left behind as interrupted (stopping their
    /// processes), applies retention, and starts the workers.
    pub fn start(config: ServeConfig) -> Result<Runner, RunnerError> {
        std::fs::create_dir_all(config.data_dir.join("builds"))
            .map_err(|e| RunnerError::Start(format!("{}: {e}", config.data_dir.display())))?;
        // Before anything is read: a second instance must not run restart recovery.
        let data_lock = lock::lock_data_dir(&config.data_dir)?;
        let store: Arc<dyn Store> = match &config.store {
            Some(url) => {
                let store = crate::store::PgStore::open(url.expose(), &config.fleet.worker_name)?;
                tracing::info!(store = %url.shown(), "the build history is on PostgreSQL");
                Arc::new(store)
            }
            None => Arc::new(crate::store::SqliteStore::open(&config.data_dir)?),
        };
        let instance = store.meta("instance", &|| random_hex(6))?;
        let inner = Arc::new(Inner {
            slots: CompileSlots::new(config.compile_slots),
            config,
            store,
            hub: Arc::new(Hub::default()),
            metrics: Arc::new(Metrics::new()),
            wake: Mutex::new(0),
            wake_cv: Condvar::new(),
            running: Mutex::new(HashMap::new()),
            cancelled_by: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            tag_prefix: format!("galley-{instance}"),
            unrecorded: Mutex::new(HashMap::new()),
            _data_lock: data_lock,
            fleet_done: AtomicBool::new(false),
        });
        inner.beat(true)?;
        inner.recover()?;
        inner.apply_retention();
        let fleet = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("galley-fleet".into())
                .spawn(move || inner.fleet())
                .map_err(|e| RunnerError::Start(e.to_string()))?
        };
        if inner
            .config
            .projects
            .values()
            .any(|p| p.watch_base.is_some())
        {
            let inner = inner.clone();
            // Not joined at shutdown: a registry it waits on may take its timeout to answer.
            std::thread::Builder::new()
                .name("galley-base-watch".into())
                .spawn(move || inner.watch_bases())
                .map_err(|e| RunnerError::Start(e.to_string()))?;
        }
        let mut workers = Vec::new();
        for n in 0..inner.config.max_running {
            let inner = inner.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("galley-worker-{n}"))
                    .spawn(move || inner.work())
                    .map_err(|e| RunnerError::Start(e.to_string()))?,
            );
        }
        Ok(Runner {
            inner,
            workers: Arc::new(Mutex::new(workers)),
            fleet: Arc::new(Mutex::new(Some(fleet))),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &ServeConfig {
        &self.inner.config
    }

    /// This instance's worker name.
    pub fn worker_name(&self) -> &str {
        &self.inner.config.fleet.worker_name
    }

    /// The fleet's workers as the store knows them, and whether each is alive (seen within a
    /// lease).
    pub fn workers(&self) -> Result<Vec<(WorkerRow, bool)>, RunnerError> {
        let now = now_ms();
        let lease = self.inner.config.fleet.lease.as_millis() as i64;
        Ok(self
            .inner
            .store
            .workers()?
            .into_iter()
            .map(|w| {
                let alive = now - w.last_seen <= lease;
                (w, alive)
            })
            .collect())
    }

    /// Queues a build (validated by the caller). An Idempotency-Key seen before with the same
    /// request gives that build back; with another request it is refused.
    pub fn submit(
        &self,
        input: &BuildInput,
        principal: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, RunnerError> {
        self.inner.submit(input, principal, idempotency_key)
    }

    /// Cancels a build: a queued one ends at once; a running one gets SIGTERM on every process
    /// group (then SIGKILL after the grace period) and ends when its pipeline has stopped.
    pub fn cancel(&self, id: i64, by: &str) -> Result<CancelReply, RunnerError> {
        let row = self.inner.row(id)?;
        match row.status {
            BuildStatus::Cancelled => return Ok(CancelReply::Cancelled(row)),
            s if s.is_final() => return Err(RunnerError::Finished { id, status: s }),
            _ => {}
        }
        if row.status == BuildStatus::Queued {
            let finished = Finished {
                error: Some(format!("cancelled by {by} before it started")),
                cancelled_by: Some(by.to_string()),
                forced_kill: Some(false),
                ..Default::default()
            };
            if self
                .inner
                .finish_queued(id, BuildStatus::Cancelled, &finished)
                .is_ok()
            {
                self.inner.metrics.cancels.inc();
                self.inner.update_queue_gauge();
                return Ok(CancelReply::Cancelled(self.inner.row(id)?));
            }
            // A worker took it meanwhile: cancel it as a running build.
        }
        self.inner
            .cancelled_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert_with(|| by.to_string());
        let handle = self.inner.running_handle(id);
        match handle {
            Some(c) => {
                c.cancel(&format!("cancelled by {by}"));
            }
            // Another worker runs it: the store tells it (a column and a notice); it acts, the
            // caller waits for the record to say so.
            None => self.inner.store.request_cancel(id, by)?,
        }
        let row = self.inner.row(id)?;
        Ok(match row.status {
            BuildStatus::Cancelled => CancelReply::Cancelled(row),
            s if s.is_final() => return Err(RunnerError::Finished { id, status: s }),
            _ => CancelReply::Stopping(row),
        })
    }

    /// Queues the inputs of an earlier build again.
    pub fn rebuild(&self, id: i64, principal: &str) -> Result<Submitted, RunnerError> {
        let row = self.inner.row(id)?;
        self.submit(&input_of(&row)?, principal, None)
    }

    /// Queues a repro of a finished build: its recorded inputs built again at another path,
    /// without the stage cache, every digest compared (`repro::rebuild`).
    pub fn repro(&self, id: i64, principal: &str) -> Result<Submitted, RunnerError> {
        let (row, input) = self.with_images(id, "reproduce", &|why| {
            RunnerError::NotReproducible { id, why }
        })?;
        let is_git = self
            .inner
            .config
            .projects
            .get(&input.project)
            .is_some_and(|p| matches!(p.source, crate::config::serve::Source::Git(_)));
        let repro = BuildInput {
            push: false,
            // A git project is checked out at the recorded commit (the record says which).
            git_ref: if is_git { row.commit.clone() } else { None },
            repro_of: Some(id),
            ..input
        };
        self.submit(&repro, principal, None)
    }

    /// Queues a rebase of a finished build: its images moved onto the project's base as it is
    /// now, without compiling, pushed again when the build pushed (`run_rebase`).
    pub fn rebase(&self, id: i64, principal: &str) -> Result<Submitted, RunnerError> {
        let (_, input) =
            self.with_images(id, "rebase", &|why| RunnerError::NotRebasable { id, why })?;
        let rebase = BuildInput {
            repro_of: None,
            retry_of: None,
            rebase_of: Some(id),
            ..input
        };
        self.submit(&rebase, principal, None)
    }

    /// A finished build that has images in its layout on this worker, and is not a repro: what
    /// a repro or a rebase starts from (`what` it is asked to do, for the reasons; `not` makes
    /// the refusal).
    fn with_images(
        &self,
        id: i64,
        what: &str,
        not: &dyn Fn(String) -> RunnerError,
    ) -> Result<(BuildRow, BuildInput), RunnerError> {
        let row = self.inner.row(id)?;
        if !row.status.is_final() {
            return Err(RunnerError::NotFinished {
                id,
                status: row.status,
            });
        }
        let input = input_of(&row)?;
        if input.repro_of.is_some() {
            return Err(not(format!(
                "it is a repro itself: {what} the build it checked"
            )));
        }
        let built = row
            .report
            .clone()
            .and_then(|r| crate::pipeline::report::Report::from_value(r).ok())
            .is_some_and(|r| r.succeeded_variants().next().is_some());
        if !built {
            return Err(not(format!(
                "no variant of it succeeded: there is no image to {what}"
            )));
        }
        if let Some(w) = row.worker.as_deref().filter(|w| *w != self.worker_name()) {
            return Err(not(format!(
                "its output layout is on worker {w}: ask that worker's API to {what} it"
            )));
        }
        if !self.inner.build_dir(id).join("out/report.json").is_file() {
            return Err(not(
                "its output layout is gone (deleted or past retention)".into()
            ));
        }
        Ok((row, input))
    }

    /// Removes a finished build's record, events and output.
    pub fn delete(&self, id: i64) -> Result<(), RunnerError> {
        let row = self.inner.row(id)?;
        if !row.status.is_final() {
            return Err(RunnerError::NotFinished {
                id,
                status: row.status,
            });
        }
        self.inner.store.delete_build(id)?;
        let _ = std::fs::remove_dir_all(self.inner.build_dir(id));
        Ok(())
    }

    /// Stops taking builds, cancels the running ones, and waits (at most `deadline`) for the
    /// workers to finish. The queued builds are the fleet's: they stay queued while another
    /// worker is alive to run them, and are cancelled when this was the last one.
    pub fn shutdown(&self, deadline: Duration) {
        let inner = &self.inner;
        inner.accepting.store(false, Ordering::SeqCst);
        inner.stopping.store(true, Ordering::SeqCst);
        inner.wake_workers();
        let others_alive = self.workers().is_ok_and(|ws| {
            ws.iter()
                .any(|(w, alive)| *alive && w.name != inner.config.fleet.worker_name)
        });
        let queued = if others_alive {
            Vec::new()
        } else {
            inner.store.queued().unwrap_or_default()
        };
        for id in queued {
            let finished = Finished {
                error: Some("the service shut down before this build started".into()),
                cancelled_by: Some("service shutdown".into()),
                forced_kill: Some(false),
                ..Default::default()
            };
            let _ = inner.finish_queued(id, BuildStatus::Cancelled, &finished);
        }
        let running = inner.running_now();
        for (id, c) in running {
            inner
                .cancelled_by
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id)
                .or_insert_with(|| "service shutdown".to_string());
            c.cancel("the service is shutting down");
        }
        let started = Instant::now();
        let workers: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            while !w.is_finished() && started.elapsed() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
        inner.fleet_done.store(true, Ordering::SeqCst);
        if let Some(f) = self.fleet.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // It wakes at least every 250 ms.
            let _ = f.join();
        }
    }

    /// Stops taking and claiming builds and lets the running ones finish, for at most
    /// `deadline` or until `stop` is set (a second signal); returns how many still run (the
    /// shutdown that follows cancels them). `/readyz` answers 503 meanwhile.
    pub fn drain(&self, deadline: Duration, stop: &AtomicBool) -> usize {
        let inner = &self.inner;
        inner.accepting.store(false, Ordering::SeqCst);
        inner.stopping.store(true, Ordering::SeqCst);
        inner.wake_workers();
        let started = Instant::now();
        loop {
            let running = inner
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            if running == 0 || started.elapsed() >= deadline || stop.load(Ordering::SeqCst) {
                return running;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Why the service is not ready to take builds, if it is not: shutting down, a store that
    /// refuses writes, or a build whose outcome is still waiting to be written.
    pub fn not_ready(&self) -> Option<String> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Some("the service is shutting down".into());
        }
        if let Some((id, why)) = self.inner.unrecorded_lock().iter().next() {
            return Some(format!(
                "the build database refuses writes (build {id}'s outcome is waiting): {why}"
            ));
        }
        if let Err(e) = self.inner.store.probe_write() {
            return Some(format!("the build database refuses writes: {e}"));
        }
        None
    }

    /// The project as configured.
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.inner.config.projects.get(name)
    }

    /// The data directory's per-build directory.
    pub fn build_dir(&self, id: i64) -> PathBuf {
        self.inner.build_dir(id)
    }
}

impl Inner {
    fn row(&self, id: i64) -> Result<BuildRow, RunnerError> {
        self.store.get_build(id)?.ok_or(RunnerError::NotFound(id))
    }

    /// Queues a build (validated by the caller). An Idempotency-Key seen before with the same
    /// request gives that build back; with another request it is refused.
    fn submit(
        &self,
        input: &BuildInput,
        principal: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, RunnerError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(RunnerError::ShuttingDown);
        }
        let request = serde_json::to_value(input).expect("a build input serializes");
        // The hash of the JSON as stored (keys sorted): what an Idempotency-Key is held to.
        let hash = hex::encode(crate::config::serve::sha256(request.to_string().as_bytes()));
        let queued_event = BuildEvent::Status(StatusChange {
            ts: ts(),
            status: BuildStatus::Queued,
            started_by: Some(principal.to_string()),
            cancelled_by: None,
        })
        .data();
        // The build and its first event in one transaction; a worker (here or elsewhere)
        // claims it from the store.
        let created = self.store.create_build(&NewBuild {
            project: &input.project,
            request: input,
            request_hash: &hash,
            started_by: principal,
            idempotency: idempotency_key.map(|k| (principal, k)),
            max_queued: self.config.max_queued,
            tag_prefix: &self.tag_prefix,
            queued_event: &queued_event,
        })?;
        match created {
            Created::New(id) => {
                self.metrics.queue_depth.inc();
                self.wake_workers();
                Ok(Submitted::New(id))
            }
            Created::Replayed(id) => Ok(Submitted::Replayed(id)),
            Created::KeyConflict => Err(RunnerError::KeyConflict),
            Created::QueueFull => Err(RunnerError::QueueFull(self.config.max_queued)),
        }
    }

    fn build_dir(&self, id: i64) -> PathBuf {
        self.config.data_dir.join("builds").join(id.to_string())
    }

    fn update_queue_gauge(&self) {
        if let Ok(counts) = self.store.count_by_status() {
            let n = counts
                .iter()
                .find(|(s, _)| *s == BuildStatus::Queued)
                .map_or(0, |(_, n)| *n);
            self.metrics.queue_depth.set(n);
        }
    }

    /// The builds running here now, with their cancel handles.
    fn running_now(&self) -> Vec<(i64, Cancel)> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// The cancel handle of build `id`, when it runs here.
    fn running_handle(&self, id: i64) -> Option<Cancel> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// This worker's heartbeat in the store (`first`: it registers, starting now); returns
    /// the running builds the store says it holds.
    fn beat(&self, first: bool) -> Result<Vec<crate::store::Held>, StoreError> {
        let fleet = &self.config.fleet;
        self.store.heartbeat(
            &fleet.worker_name,
            env!("CARGO_PKG_VERSION"),
            fleet.lease,
            first,
        )
    }

    /// Wakes every idle worker thread: one of them claims what is queued.
    fn wake_workers(&self) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.wake_cv.notify_all();
    }

    /// Ends a build that never ran (cancelled in the queue, or at shutdown).
    fn finish_queued(
        &self,
        id: i64,
        status: BuildStatus,
        finished: &Finished,
    ) -> Result<(), RunnerError> {
        let events = [
            status_event(status, finished),
            end_event(status, finished, 0),
        ]
        .map(|e| e.to_new());
        events::record(
            self.store.as_ref(),
            &self.hub,
            id,
            &events,
            Some((status, StatusFacts::Finished(finished))),
        )?;
        self.hub.close(id);
        self.metrics.build_finished(status.as_str(), 0.0);
        Ok(())
    }

    /// What this worker left behind when it stopped (a crash, a kill): the builds it was
    /// running are interrupted, and every process still carrying the tag of a build it claimed
    /// is killed. Queued builds stay queued: they are the fleet's.
    fn recover(&self) -> Result<(), RunnerError> {
        let me = &self.config.fleet.worker_name;
        let reason = format!("worker {me} stopped while this build was running (a crash or a kill); its log up to then is kept");
        let left = self.store.interrupt_held(me, &reason, &|_| {
            let finished = Finished {
                error: Some(reason.clone()),
                ..Default::default()
            };
            vec![
                status_event(BuildStatus::Interrupted, &finished).to_new(),
                end_event(BuildStatus::Interrupted, &finished, 0).to_new(),
            ]
        })?;
        for (id, _) in &left {
            tracing::warn!(build = id, "marked interrupted after a restart");
            let _ = std::fs::remove_dir_all(self.build_dir(*id).join("src"));
        }
        // One scan of /proc: the processes of any build this worker claimed (also those another
        // worker marked interrupted while this one was gone), none of another worker's.
        let prefix = format!("{}-", self.tag_prefix);
        for (tag, pids) in crate::cancel::live_tags() {
            let Some(id) = tag
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            let mine = match self.store.get_build(id)? {
                Some(row) => match &row.worker {
                    Some(w) => w == me,
                    None => left.iter().any(|(l, _)| *l == id),
                },
                None => false,
            };
            if mine {
                let killed = crate::cancel::sweep(&tag, rustix::process::Signal::KILL);
                tracing::warn!(
                    build = id,
                    killed,
                    pids = pids.len(),
                    "stopped what a build of this worker left running"
                );
            }
        }
        Ok(())
    }

    /// The fleet's bookkeeping, on its own thread: notices from other instances (a queued build
    /// wakes the workers, new events wake followers, a cancel reaches the build), every second
    /// the heartbeat (renewing the leases of this worker's builds, picking up cancels asked
    /// elsewhere), and every quarter second, while the heartbeat is fresh, the reaping of builds
    /// whose worker's lease ran out (found within a lease and a quarter second of its last
    /// renewal).
    fn fleet(self: Arc<Self>) {
        let mut beat: Option<Instant> = None;
        let mut reaped = Instant::now();
        let mut failing = false;
        while !self.fleet_done.load(Ordering::SeqCst) {
            for notice in self.store.wait_notices(Duration::from_millis(250)) {
                match notice {
                    Notice::Queued => self.wake_workers(),
                    Notice::Events(id) => self.hub.wake(id),
                    Notice::Cancel(id) => self.cancel_requested(id),
                }
            }
            let due = beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            let result = if due {
                self.heartbeat().map(|()| beat = Some(Instant::now()))
            } else {
                Ok(())
            };
            // Only a worker that reaches the store itself judges others gone.
            // (Notices wake this loop often: reaping stays at four times a second.)
            let fresh = beat.is_some_and(|t| t.elapsed() < Duration::from_millis(1500));
            let reap = fresh && reaped.elapsed() >= Duration::from_millis(250);
            let result = result.and_then(|()| {
                if reap {
                    reaped = Instant::now();
                    self.reap()
                } else {
                    Ok(())
                }
            });
            match result {
                Ok(()) if failing => {
                    tracing::info!("the fleet's heartbeat reaches the store again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::error!("the fleet's heartbeat: {e}");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// One heartbeat: leases renewed, cancels asked elsewhere acted on, builds this worker runs
    /// but no longer holds (another worker marked them interrupted while this one could not
    /// reach the store) stopped.
    fn heartbeat(&self) -> Result<(), RunnerError> {
        let held = self.beat(false)?;
        let running = self.running_now();
        for (id, cancel) in &running {
            match held.iter().find(|h| h.id == *id) {
                Some(h) => {
                    if let Some(by) = &h.cancel_requested {
                        self.cancel_local(*id, cancel, by);
                    }
                }
                None => {
                    if let Ok(row) = self.row(*id) {
                        if row.status == BuildStatus::Interrupted {
                            cancel.cancel("another worker marked this build interrupted: this worker's lease ran out while it could not reach the store");
                        }
                    }
                }
            }
        }
        self.update_queue_gauge();
        Ok(())
    }

    /// Marks interrupted (or queues again) the builds of dead workers: those whose lease ran out.
    fn reap(&self) -> Result<(), RunnerError> {
        let fleet = &self.config.fleet;
        let lease = fleet.lease;
        let lapsed = self.store.reap(&|l: &Lapsed| {
            let seen = l
                .last_seen
                .map(crate::oci::time::rfc3339_from_ms)
                .unwrap_or_else(|| "never".into());
            let finished = Finished {
                error: Some(format!(
                    "worker {} was last seen at {seen}: its lease ({}s) ran out (it crashed, was killed or lost the store); marked interrupted by worker {}",
                    l.worker,
                    lease.as_secs(),
                    fleet.worker_name
                )),
                ..Default::default()
            };
            let events = vec![
                status_event(BuildStatus::Interrupted, &finished).to_new(),
                end_event(BuildStatus::Interrupted, &finished, 0).to_new(),
            ];
            (events, finished)
        })?;
        for l in lapsed {
            tracing::warn!(build = l.id, worker = %l.worker, "the build's worker is gone: marked interrupted");
            self.hub.wake(l.id);
            self.metrics
                .build_finished(BuildStatus::Interrupted.as_str(), 0.0);
            if fleet.retry_interrupted {
                self.retry(l.id);
            }
        }
        Ok(())
    }

    /// Queues an interrupted build again, once (a retry is not retried).
    fn retry(&self, id: i64) {
        let Ok(row) = self.row(id) else { return };
        let Ok(input) = row.input() else { return };
        if input.retry_of.is_some() {
            return;
        }
        let retry = BuildInput {
            retry_of: Some(id),
            ..input
        };
        match self.submit(&retry, &format!("retry of build {id}"), None) {
            Ok(Submitted::New(n)) => {
                tracing::info!(build = id, retry = n, "queued again (retry_interrupted)")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(build = id, "cannot queue the build again: {e}"),
        }
    }

    /// A cancel asked on another instance for build `id`: acted on if it runs here.
    fn cancel_requested(&self, id: i64) {
        let handle = self.running_handle(id);
        let Some(cancel) = handle else { return };
        if let Ok(Some(by)) = self.row(id).map(|r| r.cancel_requested) {
            self.cancel_local(id, &cancel, &by);
        }
    }

    /// Cancels a build that runs here, on behalf of `by`.
    fn cancel_local(&self, id: i64, cancel: &Cancel, by: &str) {
        if cancel.is_cancelled() {
            return;
        }
        self.cancelled_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert_with(|| by.to_string());
        cancel.cancel(&format!("cancelled by {by}"));
    }

    /// Removes finished builds past the retention limits, and old idempotency keys.
    fn apply_retention(&self) {
        match self
            .store
            .expired(self.config.max_builds, self.config.max_age)
        {
            Ok(ids) => {
                for id in ids {
                    if self.store.delete_build(id).is_ok() {
                        let _ = std::fs::remove_dir_all(self.build_dir(id));
                    }
                }
            }
            Err(e) => tracing::error!("retention: {e}"),
        }
        if let Err(e) = self.store.expire_keys(Duration::from_secs(24 * 3600)) {
            tracing::error!("retention of idempotency keys: {e}");
        }
    }

    /// One worker thread: claims the oldest build it may take from the store, runs it, and
    /// waits for a wake-up (or a second: a sticky build may have become claimable, a notice may
    /// have been missed) when there is none.
    fn work(self: Arc<Self>) {
        let mut failing = false;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let seen = *self.wake.lock().unwrap_or_else(|e| e.into_inner());
            match self.claim() {
                Ok(Some((row, stored))) => {
                    failing = false;
                    let id = row.id;
                    self.update_queue_gauge();
                    if let Err(e) = self.execute(row, &stored) {
                        tracing::error!(build = id, "the runner failed: {e}");
                    }
                    continue;
                }
                Ok(None) => failing = false,
                Err(e) if !failing => {
                    tracing::error!("cannot claim a build: {e}");
                    failing = true;
                }
                Err(_) => {}
            }
            let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
            if *wake == seen && !self.stopping.load(Ordering::SeqCst) {
                let _ = self
                    .wake_cv
                    .wait_timeout(wake, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Claims a build for this worker: its status moves to running with its output directory
    /// and its `running` event, in the claim's transaction.
    fn claim(&self) -> Result<Option<(BuildRow, Vec<crate::store::StoredEvent>)>, StoreError> {
        let fleet = &self.config.fleet;
        let terms = ClaimTerms {
            worker: &fleet.worker_name,
            lease: fleet.lease,
            sticky_delay: fleet.sticky_delay,
        };
        self.store.claim(&terms, &|id| {
            let started = Started {
                output_dir: Some(self.build_dir(id).join("out").display().to_string()),
                ..Default::default()
            };
            (
                vec![status_event(BuildStatus::Running, &Finished::default()).to_new()],
                started,
            )
        })
    }

    /// Runs one claimed build from its running record to its final record.
    fn execute(
        &self,
        row: BuildRow,
        claimed: &[crate::store::StoredEvent],
    ) -> Result<(), RunnerError> {
        let id = row.id;
        let cancel = Cancel::new(&row.process_tag, self.config.cancel_grace);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, cancel.clone());
        // Followers here get the rest live; those elsewhere read the store when woken.
        self.hub.open(id);
        self.hub.publish(id, claimed);
        let log = Arc::new(BuildLog::new(
            self.store.clone(),
            self.hub.clone(),
            self.metrics.clone(),
            id,
            self.config.log_cap_bytes,
        ));
        if let Some(by) = &row.cancel_requested {
            self.cancel_local(id, &cancel, by);
        }
        self.metrics
            .queue_wait((now_ms() - row.created_at).max(0) as f64 / 1000.0);
        self.metrics.running.inc();
        let t0 = Instant::now();

        // Lines wait at most FLUSH_EVERY in a batch, even when no more arrive.
        let done = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (log, done) = (log.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(events::FLUSH_EVERY);
                    log.flush();
                }
            })
        };
        let outcome = self.run_build(id, &row, &cancel, &log);
        // A build script or a wrapper may have left a process behind outside the build's process
        // groups (setsid, a double fork): it still carries the build's tag, whatever the outcome.
        let left = sweep_leftovers(&row.process_tag, self.config.cancel_grace);
        if left > 0 {
            log.say(
                "cleanup",
                &format!("stopped {left} process(es) the build left running (detached from its process groups)"),
            );
        }
        done.store(true, Ordering::SeqCst);
        let _ = ticker.join();

        let (status, mut finished, mut report) = match outcome {
            Ok(o) => o,
            Err(e) => (
                BuildStatus::Failed,
                Finished {
                    error: Some(e),
                    ..Default::default()
                },
                None,
            ),
        };
        let status = if cancel.is_cancelled() {
            // Every process must be gone before the record says so.
            cancel.wait_settled(self.config.cancel_grace + Duration::from_secs(5));
            finished.cancelled_by = Some(
                self.cancelled_by
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id)
                    .unwrap_or_else(|| "unknown".into()),
            );
            finished.forced_kill = Some(cancel.forced());
            report = None;
            finished.error = cancel.check().err().map(|c| c.reason);
            self.metrics.cancels.inc();
            if cancel.forced() {
                self.metrics.forced_kills.inc();
            }
            BuildStatus::Cancelled
        } else {
            status
        };
        if let Some(f) = log.failure() {
            let e = finished.error.get_or_insert_with(String::new);
            if !e.is_empty() {
                e.push_str("; ");
            }
            e.push_str(&format!("the log is incomplete: {f}"));
        }
        let duration_ms = t0.elapsed().as_millis() as u64;
        if let Some(r) = &report {
            self.metrics.build_caches(r);
        }
        let (status, written) =
            self.record_outcome(id, &log, status, finished, report, duration_ms);
        if let Err(e) = self.store.checkpoint() {
            tracing::warn!(build = id, "cannot checkpoint the database: {e}");
        }
        self.hub.close(id);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.metrics.running.dec();
        self.metrics
            .build_finished(status.as_str(), duration_ms as f64 / 1000.0);
        if status == BuildStatus::Cancelled {
            // A cancelled build keeps its record and log, not a half-written output.
            let _ = std::fs::remove_dir_all(self.build_dir(id));
        }
        self.apply_retention();
        written
    }

    /// Writes a build's outcome and its `end` event. A write that fails (a full disk) is
    /// retried; after a few tries the build is recorded as failed, with the outcome it had and
    /// why it could not be written, retried until the store takes it (space returns). Meanwhile
    /// `/readyz` answers 503. At shutdown it stops trying: the next start marks the build
    /// interrupted. Returns the status written.
    fn record_outcome(
        &self,
        id: i64,
        log: &BuildLog,
        status: BuildStatus,
        mut finished: Finished,
        report: Option<Report>,
        duration_ms: u64,
    ) -> (BuildStatus, Result<(), RunnerError>) {
        const FULL_OUTCOME_TRIES: u32 = 3;
        let mut status = status;
        finished.report = report.as_ref().and_then(|r| serde_json::to_value(r).ok());
        let mut report = report;
        let mut tries = 0u32;
        loop {
            let mut evs = Vec::new();
            if let Some(r) = &report {
                evs.push(BuildEvent::Report(Box::new(r.clone())));
            }
            evs.push(status_event(status, &finished));
            evs.push(end_event(status, &finished, duration_ms));
            let err = match log.state_change(&evs, Some((status, StatusFacts::Finished(&finished))))
            {
                Ok(_) => {
                    if tries > 0 {
                        tracing::info!(build = id, tries, "the outcome is recorded after all");
                    }
                    self.unrecorded_lock().remove(&id);
                    return (status, Ok(()));
                }
                Err(e @ StoreError::Transition { .. }) => return (status, Err(e.into())),
                Err(e) => e,
            };
            tries += 1;
            tracing::error!(build = id, tries, "cannot record the outcome: {err}");
            self.unrecorded_lock().insert(id, err.to_string());
            if self.stopping.load(Ordering::SeqCst) && tries >= FULL_OUTCOME_TRIES {
                return (status, Err(err.into()));
            }
            if tries == FULL_OUTCOME_TRIES {
                // The smallest record that says what happened: no report (it may be what does
                // not fit), the outcome it had in words.
                let had = status;
                status = BuildStatus::Failed;
                report = None;
                finished.report = None;
                let before = finished
                    .error
                    .take()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                finished.error = Some(format!(
                    "the build ended {had}{before} but its outcome could not be recorded: {err}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250 * u64::from(tries.min(8))));
        }
    }

    fn unrecorded_lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, String>> {
        self.unrecorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The build itself: sources, spec, pipeline. Returns the final status and facts, or an
    /// error message for a build that could not run.
    fn run_build(
        &self,
        id: i64,
        row: &BuildRow,
        cancel: &Cancel,
        log: &BuildLog,
    ) -> Result<Ran, String> {
        let input = row.input().map_err(|e| e.to_string())?;
        let project = self
            .config
            .projects
            .get(&input.project)
            .ok_or_else(|| format!("project {} is no longer configured", input.project))?;
        let toolchain = CargoZigbuild {
            target_dir: Some(self.config.data_dir.join("targets").join(&project.name)),
        };
        // Tool versions come with the report; a build that fails before has none to tell.
        let failed = |e: String| Finished {
            error: Some(e),
            ..Default::default()
        };

        if let Some(of) = input.repro_of {
            return Ok(self.run_repro(id, of, project, cancel, log));
        }
        if let Some(of) = input.rebase_of {
            return Ok(self.run_rebase(id, of, project, input.push, cancel, log));
        }
        log.say(
            "source",
            &match &input.git_ref {
                Some(r) => format!("checking out {r} of {}", project.name),
                None => format!("building {} as it is", project.name),
            },
        );
        let checkout = source::checkout(
            &self.config.data_dir,
            project,
            input.git_ref.as_deref(),
            &self.build_dir(id).join("src"),
            cancel,
        );
        let checkout = match checkout {
            Ok(c) => c,
            Err(e) => return Ok((BuildStatus::Failed, failed(format!("source: {e}")), None)),
        };
        self.store
            .set_source(id, checkout.commit.as_deref(), checkout.dirty)
            .map_err(|e| e.to_string())?;
        let _ = log.state_change(
            &[BuildEvent::Source(SourceFacts {
                ts: ts(),
                commit: checkout.commit.clone(),
                dirty: checkout.dirty,
                git_ref: input.git_ref.clone(),
            })],
            None,
        );
        if checkout.dirty == Some(true) {
            log.say("source", "warning: the project directory has uncommitted changes: the record and the image's revision say -dirty");
        }

        let req = BuildRequest {
            project: checkout.dir.clone(),
            variants: input.variants.clone(),
            version: Some(input.version.clone()),
            base: project.base.clone(),
            output: self.build_dir(id).join("out"),
            push: if input.push {
                project.push.as_ref().map(|r| r.name())
            } else {
                None
            },
            insecure_registries: project.insecure.clone(),
            ca_bundle: project.ca_bundle.clone(),
            upx: std::env::var_os("GALLEY_UPX").map(PathBuf::from),
            cache_dir: self.config.cache_dir.clone(),
            cache_max_bytes: self.config.cache_max_bytes,
            cache_repo: project.cache_repository.clone(),
            cache_key_file: project.cache_key_file.clone(),
            sccache: project.sccache.clone(),
            ..Default::default()
        };
        let result = BuildSpec::resolve(&req)
            .map_err(|e| e.to_string())
            .and_then(|spec| {
                let ctx = Context {
                    toolchain: &Limited {
                        inner: &toolchain,
                        slots: &self.slots,
                    },
                    events: log,
                    cancel,
                };
                pipeline::run(&spec, &ctx).map_err(|e| e.to_string())
            });
        checkout.remove();
        Ok(match result {
            Ok(report) => ran_of(report),
            Err(e) => (BuildStatus::Failed, failed(e), None),
        })
    }
}

impl Inner {
    /// A repro build: the recorded report of build `of` built again in this build's directory
    /// and compared. Identical: succeeded; a difference or an error: failed. The verdict is a
    /// `verdict` event; the rebuild's own report is this build's report.
    fn run_repro(
        &self,
        id: i64,
        of: i64,
        project: &Project,
        cancel: &Cancel,
        log: &BuildLog,
    ) -> Ran {
        let failed = failed_ran;
        let report = self.build_dir(of).join("out/report.json");
        let of_row = self.row(of).ok();
        if let Some(w) = of_row
            .as_ref()
            .and_then(|r| r.worker.as_deref())
            .filter(|w| *w != self.config.fleet.worker_name)
        {
            return failed(format!(
                "build {of}'s output layout is on worker {w}, and this repro was claimed by worker {}: ask {w}'s API for the repro",
                self.config.fleet.worker_name
            ));
        }
        let recorded_commit = of_row.and_then(|r| r.commit);
        log.say("repro", &format!("reproducing build {of} from its report"));
        // A git project's sources: a worktree of the mirror at the recorded commit. A path
        // project: repro clones or copies the directory itself.
        let checkout = match (&project.source, &recorded_commit) {
            (crate::config::serve::Source::Git(_), Some(commit)) => {
                match source::checkout(
                    &self.config.data_dir,
                    project,
                    Some(commit),
                    &self.build_dir(id).join("src"),
                    cancel,
                ) {
                    Ok(c) => Some(c),
                    Err(e) => return failed(format!("source: {e}")),
                }
            }
            _ => None,
        };
        let req = repro::ReproRequest {
            report,
            work_parent: Some(self.build_dir(id)),
            // The rebuilt layout stays with the build (its report points there).
            keep_output: true,
            upx: std::env::var_os("GALLEY_UPX").map(PathBuf::from),
            cache_dir: self.config.cache_dir.clone(),
            insecure_registries: project.insecure.clone(),
            ca_bundle: project.ca_bundle.clone(),
            sources: checkout.as_ref().map(|c| {
                (
                    c.dir.clone(),
                    format!(
                        "git commit {} of {}",
                        c.commit.as_deref().unwrap_or("?"),
                        project.name
                    ),
                )
            }),
            ..Default::default()
        };
        let result = repro::prepare(&req, cancel).and_then(|plan| {
            for t in &plan.tools {
                log.say("repro", &t.line());
            }
            repro::rebuild(plan, log, cancel, Some(&self.slots))
        });
        if let Some(c) = checkout {
            c.remove();
        }
        match result {
            Ok(mut verdict) => {
                for line in verdict.human().lines() {
                    log.say("repro", line);
                }
                let report = verdict.rebuilt_report.take().map(|r| *r);
                let differing = verdict.variants.iter().filter(|v| !v.identical).count();
                let status = if verdict.identical {
                    BuildStatus::Succeeded
                } else {
                    BuildStatus::Failed
                };
                let error = (!verdict.identical).then(|| {
                    format!(
                        "not reproducible: {differing} of {} variants differ from build {of} (see the verdict)",
                        verdict.variants.len()
                    )
                });
                let _ = log.state_change(&[BuildEvent::Verdict(Box::new(verdict))], None);
                (
                    status,
                    Finished {
                        tools: report
                            .as_ref()
                            .and_then(|r| serde_json::to_value(&r.tools).ok()),
                        error,
                        ..Default::default()
                    },
                    report,
                )
            }
            Err(e) => failed(e.to_string()),
        }
    }
}

/// Stops the processes still tagged with a build's tag once it has ended: SIGTERM, then SIGKILL
/// for those still there after `grace` (at most 5 s: the build is over, nobody waits for them to
/// finish their work). Returns how many there were.
fn sweep_leftovers(tag: &str, grace: Duration) -> usize {
    use rustix::process::Signal;
    let found = crate::cancel::sweep(tag, Signal::TERM);
    if found == 0 {
        return 0;
    }
    let until = Instant::now() + grace.min(Duration::from_secs(5));
    while Instant::now() < until && !crate::cancel::tagged(tag).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::cancel::sweep(tag, Signal::KILL);
    found
}

/// How a build ran: its status, what the record says, and its report when it has one.
type Ran = (BuildStatus, Finished, Option<Report>);

/// A build that ended with a report: succeeded when every variant did, else failed with each
/// failed variant's error.
fn ran_of(report: Report) -> Ran {
    let status = if report.succeeded {
        BuildStatus::Succeeded
    } else {
        BuildStatus::Failed
    };
    let error = (!report.succeeded).then(|| {
        report
            .variants
            .iter()
            .filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.variant)))
            .collect::<Vec<_>>()
            .join("; ")
    });
    (
        status,
        Finished {
            tools: serde_json::to_value(&report.tools).ok(),
            error,
            ..Default::default()
        },
        Some(report),
    )
}

/// A build that failed before it had a report, and why.
fn failed_ran(error: String) -> Ran {
    (
        BuildStatus::Failed,
        Finished {
            error: Some(error),
            ..Default::default()
        },
        None,
    )
}

/// What a stored build asked for.
fn input_of(row: &BuildRow) -> Result<BuildInput, RunnerError> {
    Ok(row.input()?)
}

/// A build's `status` event (who cancelled it, when it was cancelled).
fn status_event(status: BuildStatus, f: &Finished) -> BuildEvent {
    BuildEvent::Status(StatusChange {
        ts: ts(),
        status,
        started_by: None,
        cancelled_by: f.cancelled_by.clone(),
    })
}

/// A build's `end` event.
fn end_event(status: BuildStatus, f: &Finished, duration_ms: u64) -> BuildEvent {
    BuildEvent::End(End {
        ts: ts(),
        status,
        error: f.error.clone(),
        cancelled_by: f.cancelled_by.clone(),
        forced_kill: f.forced_kill,
        duration_ms,
    })
}

/// The version a tag carries: `1.4.2`, `v1.4.2`, `sqlite-1.4.2`, `sqlite-1.4.2-rc.1`.
pub fn version_in_tag(tag: &str) -> Option<semver::Version> {
    let mut starts = vec![0];
    starts.extend(tag.match_indices('-').map(|(i, _)| i + 1));
    starts.into_iter().find_map(|i| {
        let rest = &tag[i..];
        let rest = rest.strip_prefix('v').unwrap_or(rest);
        semver::Version::parse(rest).ok()
    })
}

/// A version bump (ordered: a major outranks a minor outranks a patch).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Bump {
    Patch,
    Minor,
    Major,
}

/// `current` bumped: the next release after it (pre-release and build parts dropped).
pub fn bump(current: &semver::Version, how: Bump) -> semver::Version {
    let mut v = semver::Version::new(current.major, current.minor, current.patch);
    match how {
        // A pre-release of x.y.z is released as x.y.z.
        Bump::Patch if !current.pre.is_empty() => {}
        Bump::Patch => v.patch += 1,
        Bump::Minor => {
            v.minor += 1;
            v.patch = 0;
        }
        Bump::Major => {
            v.major += 1;
            v.minor = 0;
            v.patch = 0;
        }
    }
    v
}

/// The bump a commit message asks for under Conventional Commits (as release-plz and
/// semantic-release read it): `fix:` (and `perf:`) a patch, `feat:` a minor, `!` after the type
/// or a `BREAKING CHANGE:` footer a major; other types (docs, chore...) none.
pub fn commit_bump(subject: &str, body: &str) -> Option<Bump> {
    let (head, _) = subject.split_once(':')?;
    let bang = head.ends_with('!');
    let head = head.trim_end_matches('!');
    let kind = match head.split_once('(') {
        Some((k, scope)) if scope.ends_with(')') => k,
        Some(_) => return None,
        None => head,
    };
    if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let breaking = bang
        || body
            .lines()
            .any(|l| l.starts_with("BREAKING CHANGE:") || l.starts_with("BREAKING-CHANGE:"));
    if breaking {
        return Some(Bump::Major);
    }
    match kind.to_ascii_lowercase().as_str() {
        "feat" => Some(Bump::Minor),
        "fix" | "perf" => Some(Bump::Patch),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_in_tags() {
        let v = |s: &str| version_in_tag(s).map(|v| v.to_string());
        assert_eq!(v("1.4.2").as_deref(), Some("1.4.2"));
        assert_eq!(v("v2.0.0").as_deref(), Some("2.0.0"));
        assert_eq!(v("sqlite-1.4.2").as_deref(), Some("1.4.2"));
        assert_eq!(v("db-sqlite-1.4.2-rc.1").as_deref(), Some("1.4.2-rc.1"));
        assert_eq!(v("latest"), None);
        assert_eq!(v("sqlite"), None);
    }

    #[test]
    fn conventional_commits_give_their_bump() {
        for (subject, body, want) in [
            ("fix: a crash", "", Some(Bump::Patch)),
            ("perf(cache): faster", "", Some(Bump::Patch)),
            ("feat: push to GALLEY_REPO", "", Some(Bump::Minor)),
            ("feat(api)!: drop v0", "", Some(Bump::Major)),
            (
                "fix: x",
                "why\n\nBREAKING CHANGE: the flag is gone",
                Some(Bump::Major),
            ),
            ("chore: bump deps", "", None),
            ("docs(readme): typo", "", None),
            ("Fix the thing", "", None),
            ("fix the thing: really", "", None),
            ("feat(: odd", "", None),
        ] {
            assert_eq!(commit_bump(subject, body), want, "{subject}");
        }
    }

    #[test]
    fn bumps() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert_eq!(bump(&v("1.4.2"), Bump::Patch).to_string(), "1.4.3");
        assert_eq!(bump(&v("1.4.2"), Bump::Minor).to_string(), "1.5.0");
        assert_eq!(bump(&v("1.4.2"), Bump::Major).to_string(), "2.0.0");
        assert_eq!(bump(&v("1.5.0-rc.1"), Bump::Patch).to_string(), "1.5.0");
    }
}
