//! The stage cache as a stage uses it, written once: the key of the stage's inputs, a look-up
//! in the local tier, then in the remote one (the registry), whose answer the stage may refuse
//! (a missing or corrupt object, a binary that fails verification), the work when nothing
//! answered, then the outputs kept (objects first, so an entry never names a missing object),
//! offered to the remote tier's uploads, and the stage's record saying `cached`, `remote` or
//! `ran` with the key.

use std::path::PathBuf;

use serde_json::Value;

use super::report::CacheUse;
use crate::cache::remote::{Fetched, Remote};
use crate::cache::{Kind, StageCache};

/// The tiers a build's stages look in: the local directory, then the registry when configured.
#[derive(Clone, Copy)]
pub struct Tiers<'c> {
    pub local: &'c StageCache,
    pub remote: Option<&'c Remote>,
}

/// A stage's inputs, keyed, in the tiers it may use.
pub struct Keyed<'c> {
    pub tiers: Tiers<'c>,
    pub kind: Kind,
    pub key: String,
    inputs: Value,
}

impl<'c> Keyed<'c> {
    /// `None` when the build runs without the stage cache.
    pub fn new(tiers: Option<Tiers<'c>>, kind: Kind, inputs: Value) -> Option<Keyed<'c>> {
        tiers.map(|tiers| Keyed {
            tiers,
            kind,
            key: StageCache::key(kind, &inputs),
            inputs,
        })
    }
}

/// What a stage that ran offers the cache: its outputs, and the files the entry needs, each
/// stored as a content-addressed object whose digest the outputs hold under the file's name.
pub struct Keep {
    pub outputs: Value,
    pub files: Vec<(&'static str, PathBuf)>,
}

impl Keep {
    /// Outputs that need no file.
    pub fn outputs(outputs: Value) -> Keep {
        Keep {
            outputs,
            files: Vec::new(),
        }
    }
}

/// How a stage's run went through the cache.
pub struct Answer<T> {
    pub value: T,
    /// Which tier answered, or `Ran` (the work was done).
    pub used: CacheUse,
    /// Why what the stage ran could not be kept (the build goes on: a warning).
    pub not_kept: Option<String>,
    /// Why the remote tier did not answer although it had or may have had the entry (a refused
    /// entry, an unreachable registry): a warning.
    pub remote_note: Option<String>,
}

impl<T> Answer<T> {
    /// The work was not done: a tier answered.
    pub fn cached(&self) -> bool {
        self.used.cached()
    }
}

/// The one sequence of every cached stage: a matching entry that `restore` accepts answers,
/// from the local tier, else from the remote one (written to the local tier first); otherwise
/// `run` does the work and what it offers is kept and offered for upload. Without a cache,
/// `run` runs.
pub fn cached<T, E>(
    keyed: Option<&Keyed<'_>>,
    mut restore: impl FnMut(&StageCache, Value) -> Option<T>,
    run: impl FnOnce() -> Result<(T, Option<Keep>), E>,
) -> Result<Answer<T>, E> {
    let mut remote_note = None;
    if let Some(k) = keyed {
        let local = k.tiers.local;
        let mut answer = |used: CacheUse| {
            let hit = local.get(k.kind, &k.key)?;
            let value = restore(local, hit.outputs)?;
            Some(Answer {
                value,
                used,
                not_kept: None,
                remote_note: None,
            })
        };
        if let Some(a) = answer(CacheUse::Cached) {
            if let Some(r) = k.tiers.remote {
                r.offer(k.kind, &k.key, false);
            }
            return Ok(a);
        }
        if let Some(r) = k.tiers.remote {
            match r.fetch(local, k.kind, &k.key) {
                Fetched::Hit => match answer(CacheUse::Remote) {
                    Some(a) => return Ok(a),
                    None => {
                        remote_note = Some("the remote cache entry was refused by the stage".into())
                    }
                },
                Fetched::Refused(why) => {
                    remote_note = Some(format!("remote cache entry refused ({why})"))
                }
                Fetched::Unavailable(why) => {
                    remote_note = Some(format!("remote stage cache unavailable ({why})"))
                }
                Fetched::Miss => {}
            }
        }
    }
    let (value, keep) = run()?;
    let not_kept = match (keyed, keep) {
        (Some(k), Some(keep)) => {
            let kept = keep_outputs(k, keep);
            if let (Ok(()), Some(r)) = (&kept, k.tiers.remote) {
                r.offer(k.kind, &k.key, true);
            }
            kept.err()
        }
        _ => None,
    };
    Ok(Answer {
        value,
        used: CacheUse::Ran,
        not_kept,
        remote_note,
    })
}

fn keep_outputs(k: &Keyed<'_>, keep: Keep) -> Result<(), String> {
    let cache = k.tiers.local;
    let mut outputs = keep.outputs;
    let mut objects = Vec::new();
    for (name, f) in &keep.files {
        // Stored first, so the entry's digest is the one of the bytes the cache holds.
        let digest = cache.store(f).map_err(|e| e.to_string())?;
        outputs[*name] = digest.to_string().into();
        objects.push(digest);
    }
    let refs: Vec<&crate::oci::Digest> = objects.iter().collect();
    cache
        .put(k.kind, &k.key, &k.inputs, &outputs, &refs)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn cache(dir: &std::path::Path) -> StageCache {
        StageCache::open(dir, 1 << 30).unwrap()
    }

    fn local(c: &StageCache) -> Option<Tiers<'_>> {
        Some(Tiers {
            local: c,
            remote: None,
        })
    }

    #[test]
    fn a_miss_runs_and_keeps_then_a_hit_restores_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let file = dir.path().join("out.bin");
        std::fs::write(&file, b"made by the stage").unwrap();
        let keyed = Keyed::new(local(&c), Kind::Layer, serde_json::json!({"input": 1}));
        let runs = Cell::new(0);
        let run = || {
            runs.set(runs.get() + 1);
            Ok::<_, String>((
                "ran",
                Some(Keep {
                    outputs: serde_json::json!({"x": 7}),
                    files: vec![("file", file.clone())],
                }),
            ))
        };
        let first = cached(keyed.as_ref(), |_, _| Some("restored"), run).unwrap();
        assert_eq!(
            (first.value, first.used, first.not_kept),
            ("ran", CacheUse::Ran, None)
        );
        let second = cached(
            keyed.as_ref(),
            |c, outputs| {
                let d: crate::oci::Digest = outputs["file"].as_str()?.parse().ok()?;
                let back = dir.path().join("back.bin");
                c.restore(&d, &back).ok()?;
                (outputs["x"] == 7 && std::fs::read(&back).ok()? == b"made by the stage")
                    .then_some("restored")
            },
            run,
        )
        .unwrap();
        assert_eq!((second.value, second.used), ("restored", CacheUse::Cached));
        assert_eq!(runs.get(), 1);
        // Other inputs: another key, a miss.
        let other = Keyed::new(local(&c), Kind::Layer, serde_json::json!({"input": 2}));
        assert_ne!(other.as_ref().unwrap().key, keyed.as_ref().unwrap().key);
        let third = cached(other.as_ref(), |_, _| Some("restored"), run).unwrap();
        assert!(!third.cached());
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_refused_entry_runs_the_stage_and_no_cache_always_runs() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let keyed = Keyed::new(local(&c), Kind::Attest, serde_json::json!({"a": true}));
        let keep = || Ok::<_, String>((1, Some(Keep::outputs(serde_json::json!({})))));
        cached(keyed.as_ref(), |_, _| Some(0), keep).unwrap();
        let refused = cached(keyed.as_ref(), |_, _| None::<i32>, keep).unwrap();
        assert_eq!((refused.value, refused.cached()), (1, false));
        let off = cached(None, |_, _| Some(0), keep).unwrap();
        assert_eq!((off.value, off.cached()), (1, false));
        let failed = cached(
            None,
            |_, _| Some(0),
            || Err::<(i32, Option<Keep>), _>("boom"),
        );
        assert_eq!(failed.err(), Some("boom"));
    }
}
