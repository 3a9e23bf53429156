//! The store on PostgreSQL (`store = "postgres://..."`): the same tables as SQLite, a numbered
//! schema kept in `galley_meta`, migrations run at start under an advisory lock, every status move
//! read with `SELECT ... FOR UPDATE` in the transaction that writes it.
//!
//! Every `galley serve` on one store is a worker of one fleet: builds are claimed with
//! `FOR UPDATE SKIP LOCKED`, a claim is a lease its worker renews, and leases and heartbeats run
//! on the server's clock (one clock for the fleet, whatever the hosts' say). A worker name is
//! held by a session advisory lock, so two live instances cannot share one. Instances wake each
//! other with `NOTIFY galley` (`Notice`): small payloads, the facts stay in the tables.

use std::sync::Mutex;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Row, Transaction};

use super::*;
pub use crate::config::serve::redact_url;

/// The schema version this code writes (`galley_meta.schema_version`).
const SCHEMA_VERSION: i64 = 2;

/// Each migration takes the schema from its index to the next version (index 0 creates it).
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE builds (
    id BIGSERIAL PRIMARY KEY,
    project TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    started_by TEXT NOT NULL,
    process_tag TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    commit_sha TEXT,
    dirty BOOLEAN,
    tools TEXT,
    report TEXT,
    error TEXT,
    cancelled_by TEXT,
    forced_kill BOOLEAN,
    output_dir TEXT,
    next_seq BIGINT NOT NULL DEFAULT 1,
    dropped_from BIGINT,
    dropped_to BIGINT,
    dropped_lines BIGINT NOT NULL DEFAULT 0,
    dropped_bytes BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX builds_by_project ON builds(project, id);
CREATE INDEX builds_by_status ON builds(status, id);
CREATE TABLE events (
    build_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
CREATE TABLE idempotency (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    build_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (principal, key)
);
",
    "
ALTER TABLE builds ADD COLUMN worker TEXT;
ALTER TABLE builds ADD COLUMN lease_until BIGINT;
ALTER TABLE builds ADD COLUMN cancel_requested TEXT;
CREATE INDEX builds_by_worker ON builds(worker, status);
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
",
];

/// galley's advisory lock keys (arbitrary, fixed): one for migrations and creations; worker
/// names are held in their own key space (this one, and the hash of the name).
const LOCK_SCHEMA: i64 = 0x6761_6c6c_6579_0001;
const LOCK_WORKERS: i32 = 0x6761_6c6c;

/// The channel instances wake each other on.
const CHANNEL: &str = "galley";

/// The server's clock, in ms since the epoch: leases and heartbeats are compared on it.
const SERVER_NOW: &str = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

const BUILD_COLUMNS: &str = "id, project, status, request, started_by, process_tag, created_at, started_at, finished_at, commit_sha, dirty, tools, report, error, cancelled_by, forced_kill, output_dir, dropped_lines, dropped_bytes, worker, cancel_requested";

/// What went wrong, in PostgreSQL's words: the server's message (`password authentication
/// failed for user "galley"`), or the client's error and its cause (postgres' own `Display`
/// says only "db error").
pub fn detail(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The store on PostgreSQL: one connection for writes (which also holds the worker's name), a
/// few for reads, one that listens for notices.
pub struct PgStore {
    /// Kept to connect again after a server restart; never shown (see `redact_url`).
    url: String,
    worker: String,
    writer: Mutex<Client>,
    readers: Vec<Mutex<Client>>,
    listener: Mutex<Option<Client>>,
}

fn build_row(r: &Row) -> Result<BuildRow, postgres::Error> {
    let status: String = r.try_get(2)?;
    let json = |i: usize| -> Result<Option<serde_json::Value>, postgres::Error> {
        Ok(r.try_get::<_, Option<String>>(i)?
            .and_then(|s| serde_json::from_str(&s).ok()))
    };
    Ok(BuildRow {
        id: r.try_get(0)?,
        project: r.try_get(1)?,
        status: BuildStatus::parse(&status).unwrap_or(BuildStatus::Interrupted),
        request: json(3)?.unwrap_or_default(),
        started_by: r.try_get(4)?,
        process_tag: r.try_get(5)?,
        created_at: r.try_get(6)?,
        started_at: r.try_get(7)?,
        finished_at: r.try_get(8)?,
        commit: r.try_get(9)?,
        dirty: r.try_get(10)?,
        tools: json(11)?,
        report: json(12)?,
        error: r.try_get(13)?,
        cancelled_by: r.try_get(14)?,
        forced_kill: r.try_get(15)?,
        output_dir: r.try_get(16)?,
        dropped_lines: r.try_get(17)?,
        dropped_bytes: r.try_get(18)?,
        worker: r.try_get(19)?,
        cancel_requested: r.try_get(20)?,
    })
}

fn event_row(r: &Row) -> Result<StoredEvent, postgres::Error> {
    Ok(StoredEvent {
        seq: r.try_get(0)?,
        kind: r.try_get(1)?,
        data: r.try_get(2)?,
    })
}

impl PgStore {
    /// Connects to `url` as worker `worker` (refused while another live instance holds that
    /// name), and migrates the schema (refusing one newer than this galley).
    pub fn open(url: &str, worker: &str) -> Result<PgStore, StoreError> {
        let mut writer = connect(url)?;
        take_worker_lock(&mut writer, url, worker)?;
        migrate(&mut writer)?;
        let readers = (0..2)
            .map(|_| connect(url).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(PgStore {
            url: url.to_string(),
            worker: worker.to_string(),
            writer: Mutex::new(writer),
            readers,
            listener: Mutex::new(None),
        })
    }

    /// The writer, connected again if the server closed it (a restart): the worker's name is
    /// taken again with it, so a name another instance took meanwhile is refused, not shared.
    fn write(&self) -> Result<std::sync::MutexGuard<'_, Client>, StoreError> {
        let mut c = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_closed() {
            tracing::warn!(store = %redact_url(&self.url), "the store's connection was closed: connecting again");
            let mut fresh = connect(&self.url)?;
            take_worker_lock(&mut fresh, &self.url, &self.worker)?;
            *c = fresh;
        }
        Ok(c)
    }

    /// Runs `f` on a reader; when it fails because the server closed the connection (a
    /// restart), once more on a new one: a read is safe to repeat.
    fn reading<T>(
        &self,
        f: impl Fn(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut c = self.read()?;
        match f(&mut c) {
            Err(_) if c.is_closed() => {
                *c = connect(&self.url)?;
                Ok(f(&mut c)?)
            }
            r => Ok(r?),
        }
    }

    /// A reader, connected again if the server closed it.
    fn read(&self) -> Result<std::sync::MutexGuard<'_, Client>, StoreError> {
        let mut c = self
            .readers
            .iter()
            .find_map(|r| r.try_lock().ok())
            .unwrap_or_else(|| self.readers[0].lock().unwrap_or_else(|e| e.into_inner()));
        if c.is_closed() {
            *c = connect(&self.url)?;
        }
        Ok(c)
    }
}

/// One connection to `url` (10 s to connect); errors name the URL without its password.
fn connect(url: &str) -> Result<Client, StoreError> {
    let shown = || redact_url(url);
    let mut config: postgres::Config =
        url.parse()
            .map_err(|e: postgres::Error| StoreError::Connect {
                url: shown(),
                detail: e.to_string(),
            })?;
    config.connect_timeout(Duration::from_secs(10));
    config.connect(NoTls).map_err(|e| StoreError::Connect {
        url: shown(),
        detail: detail(&e),
    })
}

/// Takes the session lock that says one live instance is worker `worker` (it goes with the
/// session: a killed worker's name is free at once).
fn take_worker_lock(client: &mut Client, url: &str, worker: &str) -> Result<(), StoreError> {
    let held: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&LOCK_WORKERS, &worker],
        )?
        .try_get(0)?;
    if held {
        Ok(())
    } else {
        Err(StoreError::WorkerInUse {
            url: redact_url(url),
            worker: worker.to_string(),
        })
    }
}

/// The server's time (ms since the epoch).
fn server_now(c: &mut impl postgres::GenericClient) -> Result<i64, StoreError> {
    Ok(c.query_one(SERVER_NOW, &[])?.try_get(0)?)
}

/// Wakes the other instances (sent when the transaction commits).
fn notify(tx: &mut Transaction<'_>, notice: Notice) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &notice.payload()])?;
    Ok(())
}

/// SQLite's query text with PostgreSQL's placeholders (`?1` -> `$1`).
fn pg_sql(sqlite: &str) -> String {
    sqlite.replace('?', "$")
}

/// Moves build `id` to `to` with its facts, after reading its status `FOR UPDATE`.
fn move_status(
    tx: &mut Transaction<'_>,
    id: i64,
    to: BuildStatus,
    facts: &StatusFacts<'_>,
) -> Result<(), StoreError> {
    let current: String = tx
        .query_opt("SELECT status FROM builds WHERE id = $1 FOR UPDATE", &[&id])?
        .ok_or(StoreError::NoBuild(id))?
        .try_get(0)?;
    to.may_follow(id, current)?;
    let now = now_ms();
    match facts {
        StatusFacts::Started(s) => tx.execute(
            "UPDATE builds SET status = $1, started_at = $2, commit_sha = $3, dirty = $4, output_dir = $5 WHERE id = $6",
            &[&to.as_str(), &now, &s.commit, &s.dirty, &s.output_dir, &id],
        )?,
        StatusFacts::Finished(f) => tx.execute(
            "UPDATE builds SET status = $1, finished_at = $2, tools = COALESCE($3, tools), report = $4, error = $5, cancelled_by = $6, forced_kill = $7 WHERE id = $8",
            &[
                &to.as_str(),
                &now,
                &f.tools.as_ref().map(|v| v.to_string()),
                &f.report.as_ref().map(|v| v.to_string()),
                &f.error,
                &f.cancelled_by,
                &f.forced_kill,
                &id,
            ],
        )?,
    };
    Ok(())
}

/// Brings the schema to `SCHEMA_VERSION` in one transaction, under the schema lock (two
/// instances starting together migrate once).
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_SCHEMA])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS galley_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )?;
    let version: i64 = tx
        .query_opt(
            "SELECT value FROM galley_meta WHERE key = 'schema_version'",
            &[],
        )?
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for m in &MIGRATIONS[version as usize..] {
        tx.batch_execute(m)?;
    }
    tx.execute(
        "INSERT INTO galley_meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&SCHEMA_VERSION.to_string()],
    )?;
    tx.commit()?;
    Ok(())
}

fn insert_events(
    tx: &mut Transaction<'_>,
    id: i64,
    events: &[NewEvent],
) -> Result<Vec<StoredEvent>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let first: i64 = tx
        .query_opt(
            "SELECT next_seq FROM builds WHERE id = $1 FOR UPDATE",
            &[&id],
        )?
        .ok_or(StoreError::NoBuild(id))?
        .try_get(0)?;
    let ins =
        tx.prepare("INSERT INTO events (build_id, seq, kind, data) VALUES ($1, $2, $3, $4)")?;
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let seq = first + i as i64;
        tx.execute(&ins, &[&id, &seq, &e.kind, &e.data])?;
        out.push(StoredEvent {
            seq,
            kind: e.kind.to_string(),
            data: e.data.clone(),
        });
    }
    tx.execute(
        "UPDATE builds SET next_seq = $1 WHERE id = $2",
        &[&(first + events.len() as i64), &id],
    )?;
    notify(tx, Notice::Events(id))?;
    Ok(out)
}

impl Store for PgStore {
    fn meta(&self, key: &str, init: &dyn Fn() -> String) -> Result<String, StoreError> {
        let mut c = self.write()?;
        if let Some(r) = c.query_opt("SELECT value FROM galley_meta WHERE key = $1", &[&key])? {
            return Ok(r.try_get(0)?);
        }
        let v = init();
        c.execute(
            "INSERT INTO galley_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &v],
        )?;
        Ok(
            c.query_one("SELECT value FROM galley_meta WHERE key = $1", &[&key])?
                .try_get(0)?,
        )
    }

    fn create_build(&self, b: &NewBuild<'_>) -> Result<Created, StoreError> {
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        // Creations take turns, so the queue limit and an idempotency key hold across clients.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_SCHEMA])?;
        if let Some((principal, key)) = b.idempotency {
            if let Some(r) = tx.query_opt(
                "SELECT request_hash, build_id FROM idempotency WHERE principal = $1 AND key = $2",
                &[&principal, &key],
            )? {
                let (hash, id): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
                return Ok(if hash == b.request_hash {
                    Created::Replayed(id)
                } else {
                    Created::KeyConflict
                });
            }
        }
        let queued: i64 = tx
            .query_one("SELECT COUNT(*) FROM builds WHERE status = 'queued'", &[])?
            .try_get(0)?;
        if queued as usize >= b.max_queued {
            return Ok(Created::QueueFull);
        }
        let now = now_ms();
        let request = serde_json::to_value(b.request)
            .expect("a build input serializes")
            .to_string();
        let id: i64 = tx
            .query_one(
                "INSERT INTO builds (project, status, request, request_hash, started_by, created_at, next_seq) VALUES ($1, 'queued', $2, $3, $4, $5, 2) RETURNING id",
                &[&b.project, &request, &b.request_hash, &b.started_by, &now],
            )?
            .try_get(0)?;
        tx.execute(
            "UPDATE builds SET process_tag = $1 WHERE id = $2",
            &[&format!("{}-{id}", b.tag_prefix), &id],
        )?;
        tx.execute(
            "INSERT INTO events (build_id, seq, kind, data) VALUES ($1, 1, 'status', $2)",
            &[&id, &b.queued_event],
        )?;
        if let Some((principal, key)) = b.idempotency {
            tx.execute(
                "INSERT INTO idempotency (principal, key, request_hash, build_id, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&principal, &key, &b.request_hash, &id, &now],
            )?;
        }
        notify(&mut tx, Notice::Queued)?;
        tx.commit()?;
        Ok(Created::New(id))
    }

    fn append(
        &self,
        id: i64,
        events: &[NewEvent],
        status: Option<(BuildStatus, StatusFacts<'_>)>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        if let Some((to, facts)) = &status {
            move_status(&mut tx, id, *to, facts)?;
        }
        let stored = insert_events(&mut tx, id, events)?;
        tx.commit()?;
        Ok(stored)
    }

    fn set_source(
        &self,
        id: i64,
        commit: Option<&str>,
        dirty: Option<bool>,
    ) -> Result<(), StoreError> {
        self.write()?.execute(
            "UPDATE builds SET commit_sha = $1, dirty = $2 WHERE id = $3",
            &[&commit, &dirty, &id],
        )?;
        Ok(())
    }

    fn drop_events(&self, id: i64, seqs: &[i64], bytes: u64) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let (min, max) = (
            seqs.iter().min().copied().unwrap_or_default(),
            seqs.iter().max().copied().unwrap_or_default(),
        );
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        tx.execute(
            "DELETE FROM events WHERE build_id = $1 AND seq = ANY($2)",
            &[&id, &seqs],
        )?;
        tx.execute(
            "UPDATE builds SET dropped_from = COALESCE(dropped_from, $1), dropped_to = GREATEST(COALESCE(dropped_to, 0), $5), dropped_lines = dropped_lines + $2, dropped_bytes = dropped_bytes + $3 WHERE id = $4",
            &[&min, &(seqs.len() as i64), &(bytes as i64), &id, &max],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn events_after(
        &self,
        id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let (gap, rows) = self.reading(|c| {
            // One snapshot for the gap and the rows: a trim between them cannot hide ids.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let gap = tx.query_opt(
                "SELECT dropped_from, dropped_to, dropped_lines, dropped_bytes FROM builds WHERE id = $1",
                &[&id],
            )?;
            let rows = tx
                .query(
                    "SELECT seq, kind, data FROM events WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    &[&id, &after, &(limit as i64)],
                )?
                .iter()
                .map(event_row)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit()?;
            Ok((gap, rows))
        })?;
        let marker = match gap {
            Some(g) => dropped_marker(
                after,
                g.try_get(0)?,
                g.try_get(1)?,
                g.try_get(2)?,
                g.try_get(3)?,
            ),
            None => None,
        };
        Ok(with_marker(rows, marker, limit))
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        self.write()?.execute(
            "INSERT INTO galley_meta (key, value) VALUES ('ready_probe', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&now_ms().to_string()],
        )?;
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        // PostgreSQL checkpoints and vacuums on its own.
        Ok(())
    }

    fn stage_events(&self, id: i64) -> Result<Vec<StoredEvent>, StoreError> {
        self.reading(|c| c
            .query(
                "SELECT seq, kind, data FROM events WHERE build_id = $1 AND kind = 'stage' ORDER BY seq",
                &[&id],
            )?
            .iter()
            .map(event_row)
            .collect::<Result<_, _>>())
    }

    fn last_event(&self, id: i64, kind: &str) -> Result<Option<String>, StoreError> {
        self.reading(|c| c
            .query_opt(
                "SELECT data FROM events WHERE build_id = $1 AND kind = $2 ORDER BY seq DESC LIMIT 1",
                &[&id, &kind],
            )?
            .map(|r| r.try_get(0))
            .transpose())
    }

    fn latest_repro(&self, of: i64) -> Result<Option<BuildRow>, StoreError> {
        self.reading(|c| c
            .query_opt(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE (request::jsonb ->> 'repro_of')::bigint = $1 ORDER BY id DESC LIMIT 1"),
                &[&of],
            )?
            .map(|r| build_row(&r))
            .transpose())
    }

    fn get_build(&self, id: i64) -> Result<Option<BuildRow>, StoreError> {
        self.reading(|c| {
            c.query_opt(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1"),
                &[&id],
            )?
            .map(|r| build_row(&r))
            .transpose()
        })
    }

    fn list_builds(&self, f: &ListFilter) -> Result<Vec<BuildRow>, StoreError> {
        let status = f.status.map(|s| s.as_str());
        self.reading(|c| c
            .query(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id < $1 AND ($2::text IS NULL OR project = $2) AND ($3::text IS NULL OR status = $3) ORDER BY id DESC LIMIT $4"),
                &[&f.before.unwrap_or(i64::MAX), &f.project, &status, &(f.limit as i64)],
            )?
            .iter()
            .map(build_row)
            .collect::<Result<_, _>>())
    }

    fn queued(&self) -> Result<Vec<i64>, StoreError> {
        self.reading(|c| {
            c.query(
                "SELECT id FROM builds WHERE status = 'queued' ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
        })
    }

    fn released_versions(&self, project: &str) -> Result<Vec<String>, StoreError> {
        self.reading(|c| Ok(c
            .query(
                "SELECT request::jsonb ->> 'version' FROM builds WHERE project = $1 AND status = 'succeeded'",
                &[&project],
            )?
            .iter()
            .filter_map(|r| r.try_get::<_, Option<String>>(0).ok().flatten())
            .collect()))
    }

    fn delete_build(&self, id: i64) -> Result<Option<String>, StoreError> {
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT output_dir FROM builds WHERE id = $1 FOR UPDATE",
            &[&id],
        )?
        else {
            return Err(StoreError::NoBuild(id));
        };
        let out: Option<String> = row.try_get(0)?;
        tx.execute("DELETE FROM events WHERE build_id = $1", &[&id])?;
        tx.execute("DELETE FROM idempotency WHERE build_id = $1", &[&id])?;
        tx.execute("DELETE FROM builds WHERE id = $1", &[&id])?;
        tx.commit()?;
        Ok(out)
    }

    fn unfinished(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.reading(|c| c
            .query(
                "SELECT id, process_tag FROM builds WHERE status IN ('queued', 'running') ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, postgres::Error>>())
    }

    fn expired(&self, max_builds: usize, max_age: Duration) -> Result<Vec<i64>, StoreError> {
        let cutoff = now_ms() - max_age.as_millis() as i64;
        self.reading(|c| c
            .query(
                "SELECT id FROM builds WHERE status NOT IN ('queued', 'running') AND (created_at < $1 OR id NOT IN (SELECT id FROM builds ORDER BY id DESC LIMIT $2)) ORDER BY id",
                &[&cutoff, &(max_builds as i64)],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>())
    }

    fn expire_keys(&self, age: Duration) -> Result<usize, StoreError> {
        let cutoff = now_ms() - age.as_millis() as i64;
        Ok(self
            .write()?
            .execute("DELETE FROM idempotency WHERE created_at < $1", &[&cutoff])?
            as usize)
    }

    fn count_by_status(&self) -> Result<Vec<(BuildStatus, i64)>, StoreError> {
        self.reading(|c| {
            Ok(
                c.query("SELECT status, COUNT(*) FROM builds GROUP BY status", &[])?
                    .iter()
                    .filter_map(|r| {
                        let s: String = r.try_get(0).ok()?;
                        Some((BuildStatus::parse(&s)?, r.try_get(1).ok()?))
                    })
                    .collect(),
            )
        })
    }

    fn held_by(&self, worker: &str) -> Result<Vec<(i64, String)>, StoreError> {
        self.reading(|c| c
            .query(
                "SELECT id, process_tag FROM builds WHERE status = 'running' AND (worker = $1 OR worker IS NULL) ORDER BY id",
                &[&worker],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, postgres::Error>>())
    }

    fn claim(
        &self,
        terms: &ClaimTerms<'_>,
        start: &dyn Fn(i64) -> (Vec<NewEvent>, Started),
    ) -> Result<Option<(BuildRow, Vec<StoredEvent>)>, StoreError> {
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        let now = server_now(&mut tx)?;
        let claimable = format!(
            "{} FOR UPDATE OF b SKIP LOCKED",
            pg_sql(super::sqlite::CLAIMABLE)
        );
        let Some(row) = tx.query_opt(
            &claimable,
            &[
                &terms.worker,
                &now,
                &(terms.sticky_delay.as_millis() as i64),
                &(now - terms.lease.as_millis() as i64),
            ],
        )?
        else {
            return Ok(None);
        };
        let id: i64 = row.try_get(0)?;
        let (events, started) = start(id);
        move_status(
            &mut tx,
            id,
            BuildStatus::Running,
            &StatusFacts::Started(&started),
        )?;
        tx.execute(
            "UPDATE builds SET worker = $1, lease_until = $2 WHERE id = $3",
            &[&terms.worker, &(now + terms.lease.as_millis() as i64), &id],
        )?;
        let stored = insert_events(&mut tx, id, &events)?;
        let row = tx.query_one(
            &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1"),
            &[&id],
        )?;
        let row = build_row(&row)?;
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
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        let now = server_now(&mut tx)?;
        tx.execute(
            "INSERT INTO workers (name, version, started_at, last_seen) VALUES ($1, $2, $3, $3) ON CONFLICT (name) DO UPDATE SET version = excluded.version, last_seen = excluded.last_seen, started_at = CASE WHEN $4 THEN excluded.started_at ELSE workers.started_at END",
            &[&worker, &version, &now, &first],
        )?;
        let held = tx
            .query(
                "UPDATE builds SET lease_until = $1 WHERE worker = $2 AND status = 'running' RETURNING id, cancel_requested",
                &[&(now + lease.as_millis() as i64), &worker],
            )?
            .iter()
            .map(|r| {
                Ok(Held {
                    id: r.try_get(0)?,
                    cancel_requested: r.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        tx.commit()?;
        let mut held = held;
        held.sort_by_key(|h| h.id);
        Ok(held)
    }

    fn reap(
        &self,
        make: &dyn Fn(&Lapsed) -> (Vec<NewEvent>, Finished),
    ) -> Result<Vec<Lapsed>, StoreError> {
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        let now = server_now(&mut tx)?;
        // Locked and skipped: two workers reaping at once mark each build once.
        let lapsed = tx
            .query(
                &format!(
                    "{} FOR UPDATE OF b SKIP LOCKED",
                    pg_sql(super::sqlite::LAPSED)
                ),
                &[&now],
            )?
            .iter()
            .map(|r| {
                Ok(Lapsed {
                    id: r.try_get(0)?,
                    worker: r.try_get(1)?,
                    process_tag: r.try_get(2)?,
                    last_seen: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        for l in &lapsed {
            let (events, finished) = make(l);
            move_status(
                &mut tx,
                l.id,
                BuildStatus::Interrupted,
                &StatusFacts::Finished(&finished),
            )?;
            insert_events(&mut tx, l.id, &events)?;
        }
        tx.commit()?;
        Ok(lapsed)
    }

    fn request_cancel(&self, id: i64, by: &str) -> Result<(), StoreError> {
        let mut c = self.write()?;
        let mut tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE builds SET cancel_requested = COALESCE(cancel_requested, $2) WHERE id = $1 AND status = 'running'",
            &[&id, &by],
        )?;
        if n > 0 {
            notify(&mut tx, Notice::Cancel(id))?;
        }
        tx.commit()?;
        Ok(())
    }

    fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        self.reading(|c| {
            let mut workers = c
                .query(
                    "SELECT name, version, started_at, last_seen FROM workers ORDER BY name",
                    &[],
                )?
                .iter()
                .map(|r| {
                    Ok(WorkerRow {
                        name: r.try_get(0)?,
                        version: r.try_get(1)?,
                        started_at: r.try_get(2)?,
                        last_seen: r.try_get(3)?,
                        running: Vec::new(),
                        warm: Vec::new(),
                    })
                })
                .collect::<Result<Vec<_>, postgres::Error>>()?;
            let warm = pg_sql(super::sqlite::WARM);
            for w in &mut workers {
                w.running = c
                .query(
                    "SELECT id FROM builds WHERE worker = $1 AND status = 'running' ORDER BY id",
                    &[&w.name],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
                w.warm = c
                    .query(&warm, &[&w.name])?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
            }
            Ok(workers)
        })
    }

    fn wait_notices(&self, timeout: Duration) -> Vec<Notice> {
        let mut guard = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            match connect(&self.url).and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                Ok(c)
            }) {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    *guard = None;
                    drop(guard);
                    tracing::warn!("cannot listen for the fleet's notices: {e}");
                    std::thread::sleep(timeout);
                    return Vec::new();
                }
            }
        }
        let client = guard.as_mut().expect("connected above");
        let mut out = Vec::new();
        let mut notes = client.notifications();
        let first = notes.timeout_iter(timeout).next();
        match first {
            Ok(Some(n)) => out.extend(Notice::parse(n.payload())),
            Ok(None) => return out,
            Err(e) => {
                tracing::warn!("the fleet's notices: {}", detail(&e));
                drop(notes);
                *guard = None;
                return out;
            }
        }
        // Whatever else has arrived, without waiting.
        let mut more = notes.iter();
        while let Ok(Some(n)) = more.next() {
            out.extend(Notice::parse(n.payload()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_are_shown_without_their_password() {
        for (url, shown) in [
            (
                "postgres://galley:s3cret@db:5432/galley",
                "postgres://galley:***@db:5432/galley",
            ),
            (
                "postgresql://galley@db/galley",
                "postgresql://galley@db/galley",
            ),
            (
                "postgres://db/galley?user=g&password=s3cret",
                "postgres://db/galley?user=g&password=***",
            ),
            ("postgres://u:p%40ss@db", "postgres://u:***@db"),
        ] {
            assert_eq!(redact_url(url), shown);
            assert!(!redact_url(url).contains("s3cret"));
        }
    }
}
