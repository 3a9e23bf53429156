//! `BuildEvent`: the one type of what a build tells the outside, from the runner through the
//! store to the API, its SSE streams and the kitchen.
//!
//! The store keeps an event as its kind (a column) and the rest as JSON (`data`); the SSE frame
//! carries the kind as its `event:` name and the same JSON as its `data:`. So the serde tag
//! (`kind`) is taken out of the JSON on the way in and put back on the way out: a database written
//! before this type existed reads the same.

use serde::{Deserialize, Serialize};

use crate::pipeline::report::{CacheUse, Report};
use crate::pipeline::{Stage, StageStatus, Stream};
use crate::repro::Verdict;
use crate::store::{BuildStatus, NewEvent, StoredEvent};

/// One event of a build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildEvent {
    /// A line of log: a child's output or galley's own word.
    Log(LogEvent),
    /// A stage of one variant and target started or ended.
    Stage(StageChange),
    /// The build's status moved.
    Status(StatusChange),
    /// Where the sources came from (the commit, whether the tree was dirty, the ref asked for).
    Source(SourceFacts),
    /// The build's report, once it has one.
    Report(Box<Report>),
    /// A repro's answer: whether every digest matched, and where not.
    Verdict(Box<Verdict>),
    /// The middle of a log past its cap, dropped (the store writes this marker).
    Dropped(Dropped),
    /// The last event of every build.
    End(End),
}

/// A log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    pub ts: String,
    /// A pipeline stage, or the runner's own step (`source`, `repro`, ...).
    pub stage: String,
    pub stream: Stream,
    /// Absent for the runner's own lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub line: String,
}

/// A stage transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageChange {
    pub ts: String,
    pub variant: String,
    pub target: String,
    pub stage: Stage,
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

/// A status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub ts: String,
    pub status: BuildStatus,
    /// Who submitted the build (on `queued`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// Who cancelled it (on `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

/// The sources a build ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFacts {
    pub ts: String,
    pub commit: Option<String>,
    pub dirty: Option<bool>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
}

/// The marker for a dropped stretch of log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub lines: i64,
    pub bytes: i64,
    pub message: String,
}

/// How the build ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub ts: String,
    pub status: BuildStatus,
    pub error: Option<String>,
    pub cancelled_by: Option<String>,
    pub forced_kill: Option<bool>,
    pub duration_ms: u64,
}

/// Why a stored event cannot be read as a `BuildEvent`.
#[derive(Debug, thiserror::Error)]
#[error("event {seq} ({kind}) is unreadable: {source}")]
pub struct EventError {
    pub seq: i64,
    pub kind: String,
    #[source]
    pub source: serde_json::Error,
}

impl BuildEvent {
    /// Every kind, in the order of the variants.
    pub const KINDS: [&'static str; 8] = [
        "log", "stage", "status", "source", "report", "verdict", "dropped", "end",
    ];

    /// The kind of [`BuildEvent::Verdict`], for looking it up in the store.
    pub const VERDICT: &'static str = "verdict";

    /// The kind: the store's column, the SSE event name, the serde tag.
    pub fn kind(&self) -> &'static str {
        match self {
            BuildEvent::Log(_) => "log",
            BuildEvent::Stage(_) => "stage",
            BuildEvent::Status(_) => "status",
            BuildEvent::Source(_) => "source",
            BuildEvent::Report(_) => "report",
            BuildEvent::Verdict(_) => Self::VERDICT,
            BuildEvent::Dropped(_) => "dropped",
            BuildEvent::End(_) => "end",
        }
    }

    /// The JSON the store keeps and SSE sends: the event without its kind.
    pub fn data(&self) -> String {
        let mut v = serde_json::to_value(self).expect("an event serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("kind");
        }
        v.to_string()
    }

    /// The event as the store appends it (`log_bytes` counts toward the log cap).
    pub fn to_new(&self) -> NewEvent {
        let kind = self.kind();
        let data = self.data();
        // What the row costs, not only the line's text: a log of one-byte lines is mostly
        // timestamps, stage names and keys.
        let log_bytes = match self {
            BuildEvent::Log(_) => (kind.len() + data.len()) as u64 + crate::store::EVENT_OVERHEAD,
            _ => 0,
        };
        NewEvent {
            kind,
            data,
            log_bytes,
        }
    }

    /// Reads an event from its kind and its stored JSON.
    pub fn decode(kind: &str, data: &str) -> Result<BuildEvent, serde_json::Error> {
        let mut v: serde_json::Value = serde_json::from_str(data)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), kind.into());
        }
        serde_json::from_value(v)
    }

    /// Reads a stored event.
    pub fn from_stored(e: &StoredEvent) -> Result<BuildEvent, EventError> {
        Self::decode(&e.kind, &e.data).map_err(|source| EventError {
            seq: e.seq,
            kind: e.kind.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip_nulls(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.retain(|_, x| !x.is_null());
                o.values_mut().for_each(strip_nulls);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }

    /// Every event of a database written before `BuildEvent` existed (by the galley of
    /// ba2efb4: a succeeded, a cached, a failed and a cancelled build) reads as a `BuildEvent`,
    /// and writes back as the same JSON (nulls aside: absent and null read the same).
    #[test]
    fn events_of_a_database_written_before_read_and_write_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("galley.db");
        std::fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/store/before-seams/galley.db"
            ),
            &db,
        )
        .unwrap();
        let store = crate::store::SqliteStore::open(dir.path()).unwrap();
        use crate::store::Store as _;
        let mut kinds = std::collections::BTreeSet::new();
        for id in 1..=4 {
            let events = store.events_after(id, 0, 10_000).unwrap();
            assert!(!events.is_empty(), "build {id} has events");
            for e in &events {
                let typed = BuildEvent::from_stored(e).unwrap();
                assert_eq!(typed.kind(), e.kind);
                let mut was: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                let mut now: serde_json::Value = serde_json::from_str(&typed.data()).unwrap();
                strip_nulls(&mut was);
                strip_nulls(&mut now);
                assert_eq!(now, was, "event {} of build {id} ({})", e.seq, e.kind);
                kinds.insert(e.kind.clone());
            }
            assert!(matches!(
                BuildEvent::from_stored(events.last().unwrap()).unwrap(),
                BuildEvent::End(_)
            ));
        }
        let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
        assert_eq!(kinds, ["end", "log", "report", "source", "stage", "status"]);
    }

    #[test]
    fn an_event_of_an_unknown_kind_or_shape_is_an_error() {
        assert!(BuildEvent::decode("nonsense", "{}").is_err());
        assert!(BuildEvent::decode("stage", r#"{"ts":"x"}"#).is_err());
        let e = BuildEvent::Dropped(Dropped {
            lines: 3,
            bytes: 30,
            message: "[dropped]".into(),
        });
        assert_eq!(
            BuildEvent::decode(e.kind(), &e.data()).unwrap().data(),
            e.data()
        );
        assert!(!e.data().contains("kind"));
    }
}
