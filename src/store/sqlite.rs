//! The embedded store: SQLite in `DATA_DIR/galley.db`.
//!
//! One file, WAL, a busy timeout, `BEGIN IMMEDIATE` for every read-modify-write; one writer
//! connection (`synchronous = FULL`) and a few readers.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::*;

/// The database, with one connection for writes and a few for reads.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    started_by TEXT NOT NULL,
    process_tag TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    commit_sha TEXT,
    dirty INTEGER,
    tools TEXT,
    report TEXT,
    error TEXT,
    cancelled_by TEXT,
    forced_kill INTEGER,
    output_dir TEXT,
    next_seq INTEGER NOT NULL DEFAULT 1,
    dropped_from INTEGER,
    dropped_lines INTEGER NOT NULL DEFAULT 0,
    dropped_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS builds_by_project ON builds(project, id);
CREATE INDEX IF NOT EXISTS builds_by_status ON builds(status, id);
CREATE TABLE IF NOT EXISTS events (
    build_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    build_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// The schema version this code writes (`PRAGMA user_version`). 2 added `dropped_to`; 3 the
/// fleet's columns (a build's worker, lease and cancel request) and the `workers` table.
const SCHEMA_VERSION: i64 = 3;

/// Migrations from each older version to the next, in order (index 0 takes version 1 to 2).
/// `SCHEMA` is version 1 (`CREATE ... IF NOT EXISTS`: a database of version 0, written before
/// versions were kept, has the same tables); the migrations take it from there.
const MIGRATIONS: &[&str] = &[
    "ALTER TABLE builds ADD COLUMN dropped_to INTEGER;",
    "ALTER TABLE builds ADD COLUMN worker TEXT;
     ALTER TABLE builds ADD COLUMN lease_until INTEGER;
     ALTER TABLE builds ADD COLUMN cancel_requested TEXT;
     CREATE INDEX builds_by_worker ON builds(worker, status);
     CREATE TABLE workers (
         name TEXT PRIMARY KEY,
         version TEXT NOT NULL,
         started_at INTEGER NOT NULL,
         last_seen INTEGER NOT NULL
     );",
];

/// The WAL is truncated to this after a checkpoint, so one big build does not leave a big file.
const WAL_LIMIT_BYTES: i64 = 4 << 20;

/// Opens a connection and checks what SQLite answered to each setting: a database where WAL
/// cannot be set (a network file system, a read-only directory) is refused, not used quietly
/// in another mode.
fn open_conn(path: &Path, writer: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Pragma {
            pragma: "journal_mode",
            wanted: "wal",
            got: mode,
        });
    }
    // The writer commits what the API acknowledges (a 202, a final status): FULL syncs the WAL
    // on every commit, so a power loss cannot take back an answer already given. Readers never
    // commit, NORMAL is enough for them.
    let (sync, code) = if writer { ("FULL", 2) } else { ("NORMAL", 1) };
    conn.pragma_update(None, "synchronous", sync)?;
    let got: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    if got != code {
        return Err(StoreError::Pragma {
            pragma: "synchronous",
            wanted: sync,
            got: got.to_string(),
        });
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if writer {
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)?;
    }
    Ok(conn)
}

const BUILD_COLUMNS: &str = "id, project, status, request, started_by, process_tag, created_at, started_at, finished_at, commit_sha, dirty, tools, report, error, cancelled_by, forced_kill, output_dir, dropped_lines, dropped_bytes, worker, cancel_requested";

fn json_col(v: Option<String>) -> Option<serde_json::Value> {
    v.and_then(|s| serde_json::from_str(&s).ok())
}

fn build_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRow> {
    let status: String = r.get(2)?;
    Ok(BuildRow {
        id: r.get(0)?,
        project: r.get(1)?,
        status: BuildStatus::parse(&status).unwrap_or(BuildStatus::Interrupted),
        request: json_col(r.get(3)?).unwrap_or_default(),
        started_by: r.get(4)?,
        process_tag: r.get(5)?,
        created_at: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        commit: r.get(9)?,
        dirty: r.get::<_, Option<i64>>(10)?.map(|d| d != 0),
        tools: json_col(r.get(11)?),
        report: json_col(r.get(12)?),
        error: r.get(13)?,
        cancelled_by: r.get(14)?,
        forced_kill: r.get::<_, Option<i64>>(15)?.map(|d| d != 0),
        output_dir: r.get(16)?,
        dropped_lines: r.get(17)?,
        dropped_bytes: r.get(18)?,
        worker: r.get(19)?,
        cancel_requested: r.get(20)?,
    })
}

impl SqliteStore {
    /// Opens (creating) `galley.db` in `dir`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("galley.db");
        let mut writer = open_conn(&path, true)?;
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            // One transaction: a migration that fails half-way leaves the old schema intact.
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if version == 0 {
                tx.execute_batch(SCHEMA)?;
            }
            for m in &MIGRATIONS[(version.max(1) - 1) as usize..] {
                tx.execute_batch(m)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
        }
        let readers = (0..4)
            .map(|_| open_conn(&path, false).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers,
        })
    }

    fn write(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        for r in &self.readers {
            if let Ok(c) = r.try_lock() {
                return c;
            }
        }
        self.readers[0].lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for SqliteStore {
    /// A value kept across restarts (created with `init` the first time).
    fn meta(&self, key: &str, init: &dyn Fn() -> String) -> Result<String, StoreError> {
        let conn = self.write();
        if let Some(v) = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?
        {
            return Ok(v);
        }
        let v = init();
        conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", [key, &v])?;
        Ok(v)
    }

    /// Records a queued build (with its first event), honouring the idempotency key and the
    /// queue limit, in one transaction.
    fn create_build(&self, b: &NewBuild<'_>) -> Result<Created, StoreError> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some((principal, key)) = b.idempotency {
            let seen: Option<(String, i64)> = tx
                .query_row(
                    "SELECT request_hash, build_id FROM idempotency WHERE principal = ?1 AND key = ?2",
                    [principal, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((hash, id)) = seen {
                return Ok(if hash == b.request_hash {
                    Created::Replayed(id)
                } else {
                    Created::KeyConflict
                });
            }
        }
        let queued: i64 = tx.query_row(
            "SELECT COUNT(*) FROM builds WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )?;
        if queued as usize >= b.max_queued {
            return Ok(Created::QueueFull);
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO builds (project, status, request, request_hash, started_by, created_at, next_seq) VALUES (?1, 'queued', ?2, ?3, ?4, ?5, 2)",
            params![
                b.project,
                serde_json::to_value(b.request)
                    .expect("a build input serializes")
                    .to_string(),
                b.request_hash,
                b.started_by,
                now
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "UPDATE builds SET process_tag = ?1 WHERE id = ?2",
            params![format!("{}-{id}", b.tag_prefix), id],
        )?;
        tx.execute(
            "INSERT INTO events (build_id, seq, kind, data) VALUES (?1, 1, 'status', ?2)",
            params![id, b.queued_event],
        )?;
        if let Some((principal, key)) = b.idempotency {
            tx.execute(
                "INSERT INTO idempotency (principal, key, request_hash, build_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![principal, key, b.request_hash, id, now],
            )?;
        }
        tx.commit()?;
        Ok(Created::New(id))
    }

    /// Appends events, and (when given) moves the build's status in the same transaction; returns
    /// the stored events with their sequence numbers. A status that would move backwards is an
    /// error and nothing is written.
    fn append(
        &self,
        id: i64,
        events: &[NewEvent],
        status: Option<(BuildStatus, StatusFacts<'_>)>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some((to, facts)) = &status {
            move_status(&tx, id, *to, facts)?;
        }
        let stored = insert_events(&tx, id, events)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Records the commit a build's sources are at, and whether they were dirty.
    fn set_source(
        &self,
        id: i64,
        commit: Option<&str>,
        dirty: Option<bool>,
    ) -> Result<(), StoreError> {
        self.write().execute(
            "UPDATE builds SET commit_sha = ?1, dirty = ?2 WHERE id = ?3",
            params![commit, dirty.map(i64::from), id],
        )?;
        Ok(())
    }

    /// Drops stored log events (the oldest of a log's tail), remembering where the gap starts
    /// and how much it held.
    fn drop_events(&self, id: i64, seqs: &[i64], bytes: u64) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut del =
                tx.prepare_cached("DELETE FROM events WHERE build_id = ?1 AND seq = ?2")?;
            for s in seqs {
                del.execute(params![id, s])?;
            }
        }
        tx.execute(
            "UPDATE builds SET dropped_from = COALESCE(dropped_from, ?1), dropped_to = MAX(COALESCE(dropped_to, 0), ?5), dropped_lines = dropped_lines + ?2, dropped_bytes = dropped_bytes + ?3 WHERE id = ?4",
            params![
                seqs.iter().min().copied().unwrap_or_default(),
                seqs.len() as i64,
                bytes as i64,
                id,
                seqs.iter().max().copied().unwrap_or_default()
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Events after `after` (the SSE `Last-Event-ID`), at most `limit`. When the log's middle
    /// was dropped and any of it lies after `after`, a `dropped` event stands where the gap
    /// ends: its id is the last dropped id, so every reader whose ids jump is told, whether it
    /// starts before the gap or inside it, and a reader resuming after the marker does not get
    /// it twice. (A database written before the gap's end was kept has only its start.)
    fn events_after(
        &self,
        id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let conn = self.read();
        let gap: Option<(Option<i64>, Option<i64>, i64, i64)> = conn
            .query_row(
                "SELECT dropped_from, dropped_to, dropped_lines, dropped_bytes FROM builds WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, kind, data FROM events WHERE build_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![id, after, limit as i64], |r| {
            Ok(StoredEvent {
                seq: r.get(0)?,
                kind: r.get(1)?,
                data: r.get(2)?,
            })
        })?;
        let rows: Vec<StoredEvent> = rows.collect::<Result<_, _>>()?;
        let marker =
            gap.and_then(|(from, to, lines, bytes)| dropped_marker(after, from, to, lines, bytes));
        Ok(with_marker(rows, marker, limit))
    }

    /// Writes one small row and commits: whether the database takes writes now (a full disk,
    /// a read-only file system do not).
    fn probe_write(&self) -> Result<(), StoreError> {
        self.write().execute(
            "INSERT INTO meta (key, value) VALUES ('ready_probe', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [now_ms().to_string()],
        )?;
        Ok(())
    }

    /// Folds the WAL back into the database and truncates it (after a build ends), so the
    /// file a big log grew does not stay on disk. Busy readers make it partial, which is fine.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let conn = self.write();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// A build's `stage` events, in order.
    fn stage_events(&self, id: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, kind, data FROM events WHERE build_id = ?1 AND kind = 'stage' ORDER BY seq",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(StoredEvent {
                seq: r.get(0)?,
                kind: r.get(1)?,
                data: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The data of a build's last event of `kind` (a repro's `verdict`).
    fn last_event(&self, id: i64, kind: &str) -> Result<Option<String>, StoreError> {
        let conn = self.read();
        Ok(conn
            .query_row(
                "SELECT data FROM events WHERE build_id = ?1 AND kind = ?2 ORDER BY seq DESC LIMIT 1",
                params![id, kind],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The newest repro of build `of` (a build whose request has `repro_of` = `of`).
    fn latest_repro(&self, of: i64) -> Result<Option<BuildRow>, StoreError> {
        let conn = self.read();
        Ok(conn
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE json_extract(request, '$.repro_of') = ?1 ORDER BY id DESC LIMIT 1"),
                [of],
                build_row,
            )
            .optional()?)
    }

    fn get_build(&self, id: i64) -> Result<Option<BuildRow>, StoreError> {
        let conn = self.read();
        Ok(conn
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?1"),
                [id],
                build_row,
            )
            .optional()?)
    }

    /// History, newest first.
    fn list_builds(&self, f: &ListFilter) -> Result<Vec<BuildRow>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {BUILD_COLUMNS} FROM builds WHERE id < ?1 AND (?2 IS NULL OR project = ?2) AND (?3 IS NULL OR status = ?3) ORDER BY id DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![
                f.before.unwrap_or(i64::MAX),
                f.project,
                f.status.map(|s| s.as_str()),
                f.limit as i64
            ],
            build_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of queued builds, oldest first (to resume the queue after a restart: none are left,
    /// they are interrupted; used by the runner's bookkeeping and tests).
    fn queued(&self) -> Result<Vec<i64>, StoreError> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached("SELECT id FROM builds WHERE status = 'queued' ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The versions of the project's succeeded builds.
    fn released_versions(&self, project: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT json_extract(request, '$.version') FROM builds WHERE project = ?1 AND status = 'succeeded'",
        )?;
        let rows = stmt.query_map([project], |r| r.get::<_, Option<String>>(0))?;
        Ok(rows
            .filter_map(|r| r.ok().flatten())
            .collect::<Vec<String>>())
    }

    /// Removes a finished build and its events. Returns its output directory, if any.
    fn delete_build(&self, id: i64) -> Result<Option<String>, StoreError> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out: Option<Option<String>> = tx
            .query_row("SELECT output_dir FROM builds WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(out) = out else {
            return Err(StoreError::NoBuild(id));
        };
        tx.execute("DELETE FROM events WHERE build_id = ?1", [id])?;
        tx.execute("DELETE FROM idempotency WHERE build_id = ?1", [id])?;
        tx.execute("DELETE FROM builds WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(out)
    }

    fn unfinished(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT id, process_tag FROM builds WHERE status IN ('queued', 'running') ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Finished builds past the retention limits (older than `max_age`, or beyond the newest
    /// `max_builds`), oldest first.
    fn expired(&self, max_builds: usize, max_age: Duration) -> Result<Vec<i64>, StoreError> {
        let conn = self.read();
        let cutoff = now_ms() - max_age.as_millis() as i64;
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM builds WHERE status NOT IN ('queued', 'running') AND (created_at < ?1 OR id NOT IN (SELECT id FROM builds ORDER BY id DESC LIMIT ?2)) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![cutoff, max_builds as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets idempotency keys older than `age`.
    fn expire_keys(&self, age: Duration) -> Result<usize, StoreError> {
        let cutoff = now_ms() - age.as_millis() as i64;
        Ok(self
            .write()
            .execute("DELETE FROM idempotency WHERE created_at < ?1", [cutoff])?)
    }

    /// How many builds have each status.
    fn count_by_status(&self) -> Result<Vec<(BuildStatus, i64)>, StoreError> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached("SELECT status, COUNT(*) FROM builds GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
        Ok(rows
            .filter_map(|r| r.ok())
            .filter_map(|(s, n)| Some((BuildStatus::parse(&s)?, n)))
            .collect())
    }

    fn held_by(&self, worker: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT id, process_tag FROM builds WHERE status = 'running' AND (worker = ?1 OR worker IS NULL) ORDER BY id",
        )?;
        let rows = stmt.query_map([worker], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn claim(
        &self,
        terms: &ClaimTerms<'_>,
        start: &dyn Fn(i64) -> (Vec<NewEvent>, Started),
    ) -> Result<Option<(BuildRow, Vec<StoredEvent>)>, StoreError> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let id: Option<i64> = tx
            .query_row(
                CLAIMABLE,
                params![
                    terms.worker,
                    now,
                    terms.sticky_delay.as_millis() as i64,
                    now - terms.lease.as_millis() as i64
                ],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Ok(None);
        };
        let (events, started) = start(id);
        move_status(
            &tx,
            id,
            BuildStatus::Running,
            &StatusFacts::Started(&started),
        )?;
        tx.execute(
            "UPDATE builds SET worker = ?1, lease_until = ?2 WHERE id = ?3",
            params![terms.worker, now + terms.lease.as_millis() as i64, id],
        )?;
        let stored = insert_events(&tx, id, &events)?;
        let row = tx.query_row(
            &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?1"),
            [id],
            build_row,
        )?;
        tx.commit()?;
        Ok(Some((row, stored)))
    }

    fn heartbeat(
        &self,
        worker: &str,
        version: &str,
        lease: Duration,
        first: bool,
    ) -> Result<Vec<Held>, StoreError> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO workers (name, version, started_at, last_seen) VALUES (?1, ?2, ?3, ?3) ON CONFLICT(name) DO UPDATE SET version = excluded.version, last_seen = excluded.last_seen, started_at = CASE WHEN ?4 THEN excluded.started_at ELSE workers.started_at END",
            params![worker, version, now, first],
        )?;
        tx.execute(
            "UPDATE builds SET lease_until = ?1 WHERE worker = ?2 AND status = 'running'",
            params![now + lease.as_millis() as i64, worker],
        )?;
        let held = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, cancel_requested FROM builds WHERE worker = ?1 AND status = 'running' ORDER BY id",
            )?;
            let rows = stmt.query_map([worker], |r| {
                Ok(Held {
                    id: r.get(0)?,
                    cancel_requested: r.get(1)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(held)
    }

    fn reap(
        &self,
        make: &dyn Fn(&Lapsed) -> (Vec<NewEvent>, Finished),
    ) -> Result<Vec<Lapsed>, StoreError> {
        let mut conn = self.write();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let lapsed = {
            let mut stmt = tx.prepare_cached(LAPSED)?;
            let rows = stmt.query_map([now_ms()], |r| {
                Ok(Lapsed {
                    id: r.get(0)?,
                    worker: r.get(1)?,
                    process_tag: r.get(2)?,
                    last_seen: r.get(3)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        for l in &lapsed {
            let (events, finished) = make(l);
            move_status(
                &tx,
                l.id,
                BuildStatus::Interrupted,
                &StatusFacts::Finished(&finished),
            )?;
            insert_events(&tx, l.id, &events)?;
        }
        tx.commit()?;
        Ok(lapsed)
    }

    fn request_cancel(&self, id: i64, by: &str) -> Result<(), StoreError> {
        self.write().execute(
            "UPDATE builds SET cancel_requested = COALESCE(cancel_requested, ?2) WHERE id = ?1 AND status = 'running'",
            params![id, by],
        )?;
        Ok(())
    }

    fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT name, version, started_at, last_seen FROM workers ORDER BY name",
        )?;
        let mut workers = stmt
            .query_map([], |r| {
                Ok(WorkerRow {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    started_at: r.get(2)?,
                    last_seen: r.get(3)?,
                    running: Vec::new(),
                    warm: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut running = conn.prepare_cached(
            "SELECT id FROM builds WHERE worker = ?1 AND status = 'running' ORDER BY id",
        )?;
        let mut warm = conn.prepare_cached(WARM)?;
        for w in &mut workers {
            w.running = running
                .query_map([&w.name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            w.warm = warm
                .query_map([&w.name], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
        }
        Ok(workers)
    }
}

/// The oldest queued build worker ?1 may claim at ?2 (ms): one whose project was last built by
/// another worker that is still alive (seen since ?4) waits ?3 ms for it.
pub(super) const CLAIMABLE: &str = "SELECT b.id FROM builds b WHERE b.status = 'queued' AND (b.created_at <= CAST(?2 AS BIGINT) - CAST(?3 AS BIGINT) OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.name <> ?1 AND w.last_seen >= ?4 AND w.name = (SELECT p.worker FROM builds p WHERE p.project = b.project AND p.worker IS NOT NULL ORDER BY p.id DESC LIMIT 1))) ORDER BY b.id LIMIT 1";

/// Running builds whose lease ended before ?1 (ms), with their worker's last heartbeat.
pub(super) const LAPSED: &str = "SELECT b.id, b.worker, b.process_tag, w.last_seen FROM builds b LEFT JOIN workers w ON w.name = b.worker WHERE b.status = 'running' AND b.lease_until IS NOT NULL AND b.lease_until < ?1 AND b.worker IS NOT NULL ORDER BY b.id";

/// The projects worker ?1 built successfully, most recent first.
pub(super) const WARM: &str = "SELECT project FROM builds WHERE worker = ?1 AND status = 'succeeded' GROUP BY project ORDER BY MAX(id) DESC LIMIT 20";

/// Moves build `id` to `to` with its facts, after checking the move is forward (read in the
/// same transaction).
fn move_status(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    to: BuildStatus,
    facts: &StatusFacts<'_>,
) -> Result<(), StoreError> {
    let current: String = tx
        .query_row("SELECT status FROM builds WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or(StoreError::NoBuild(id))?;
    to.may_follow(id, current)?;
    let now = now_ms();
    match facts {
        StatusFacts::Started(s) => tx.execute(
            "UPDATE builds SET status = ?1, started_at = ?2, commit_sha = ?3, dirty = ?4, output_dir = ?5 WHERE id = ?6",
            params![to.as_str(), now, s.commit, s.dirty.map(i64::from), s.output_dir, id],
        )?,
        StatusFacts::Finished(f) => tx.execute(
            "UPDATE builds SET status = ?1, finished_at = ?2, tools = COALESCE(?3, tools), report = ?4, error = ?5, cancelled_by = ?6, forced_kill = ?7 WHERE id = ?8",
            params![
                to.as_str(),
                now,
                f.tools.as_ref().map(|v| v.to_string()),
                f.report.as_ref().map(|v| v.to_string()),
                f.error,
                f.cancelled_by,
                f.forced_kill.map(i64::from),
                id
            ],
        )?,
    };
    Ok(())
}

fn insert_events(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    events: &[NewEvent],
) -> Result<Vec<StoredEvent>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let first: i64 = tx
        .query_row("SELECT next_seq FROM builds WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or(StoreError::NoBuild(id))?;
    let mut out = Vec::with_capacity(events.len());
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO events (build_id, seq, kind, data) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (i, e) in events.iter().enumerate() {
            let seq = first + i as i64;
            ins.execute(params![id, seq, e.kind, e.data])?;
            out.push(StoredEvent {
                seq,
                kind: e.kind.to_string(),
                data: e.data.clone(),
            });
        }
    }
    tx.execute(
        "UPDATE builds SET next_seq = ?1 WHERE id = ?2",
        params![first + events.len() as i64, id],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_contract_holds_on_sqlite() {
        crate::store::conformance::run(&|name| Box::new(store(name)));
    }

    fn store(name: &str) -> SqliteStore {
        let dir = std::env::temp_dir().join(format!("galley-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        SqliteStore::open(&dir).unwrap()
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("galley.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
        assert!(err.to_string().contains("newer galley"), "{err}");
        let conn = Connection::open(dir.path().join("galley.db")).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION + 1);
    }

    #[test]
    fn a_version_1_database_is_migrated_in_place() {
        let dir = std::env::temp_dir().join(format!("galley-store-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let conn = Connection::open(dir.join("galley.db")).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = SqliteStore::open(&dir).unwrap();
        let w = s.write();
        let v: i64 = w
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        let has: i64 = w
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('builds') WHERE name = 'dropped_to'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!((v, has), (SCHEMA_VERSION, 1));
    }

    #[test]
    fn the_writer_syncs_every_commit_and_its_settings_are_checked() {
        let s = store("pragmas");
        let w = s.write();
        let mode: String = w
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = w
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        let limit: i64 = w
            .pragma_query_value(None, "journal_size_limit", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync, limit), ("wal", 2, WAL_LIMIT_BYTES));
        drop(w);
        let r = s.read();
        let sync: i64 = r
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "readers never commit: NORMAL");
        drop(r);
        // A database SQLite cannot put in WAL mode (here: in memory) is refused, not used.
        let err = open_conn(Path::new(":memory:"), true).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Pragma {
                    pragma: "journal_mode",
                    ..
                }
            ),
            "{err}"
        );
    }
}
