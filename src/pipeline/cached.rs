//! The stage cache as a stage uses it, written once: the key of the stage's inputs, a look-up
//! whose answer the stage may refuse (a missing or corrupt object), the work when nothing
//! answered, then the outputs kept (objects first, so an entry never names a missing object) and
//! the stage's record saying `cached` or `ran` with the key.

use std::path::PathBuf;

use serde_json::Value;

use crate::cache::{Kind, StageCache};

/// A stage's inputs, keyed, in the cache it may use.
pub struct Keyed<'c> {
    pub cache: &'c StageCache,
    pub kind: Kind,
    pub key: String,
    inputs: Value,
}

impl<'c> Keyed<'c> {
    /// `None` when the build runs without the stage cache.
    pub fn new(cache: Option<&'c StageCache>, kind: Kind, inputs: Value) -> Option<Keyed<'c>> {
        cache.map(|cache| Keyed {
            cache,
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
    /// The cache answered (the work was not done).
    pub cached: bool,
    /// Why what the stage ran could not be kept (the build goes on: a warning).
    pub not_kept: Option<String>,
}

/// The one sequence of every cached stage: a matching entry that `restore` accepts answers;
/// otherwise `run` does the work and what it offers is kept. Without a cache, `run` runs.
pub fn cached<T, E>(
    keyed: Option<&Keyed<'_>>,
    restore: impl FnOnce(&StageCache, Value) -> Option<T>,
    run: impl FnOnce() -> Result<(T, Option<Keep>), E>,
) -> Result<Answer<T>, E> {
    if let Some(k) = keyed {
        let hit = k.cache.get(k.kind, &k.key);
        if let Some(value) = hit.and_then(|h| restore(k.cache, h.outputs)) {
            return Ok(Answer {
                value,
                cached: true,
                not_kept: None,
            });
        }
    }
    let (value, keep) = run()?;
    let not_kept = match (keyed, keep) {
        (Some(k), Some(keep)) => keep_outputs(k, keep).err(),
        _ => None,
    };
    Ok(Answer {
        value,
        cached: false,
        not_kept,
    })
}

fn keep_outputs(k: &Keyed<'_>, keep: Keep) -> Result<(), String> {
    let mut outputs = keep.outputs;
    let mut objects = Vec::new();
    for (name, f) in &keep.files {
        // Stored first, so the entry's digest is the one of the bytes the cache holds.
        let digest = k.cache.store(f).map_err(|e| e.to_string())?;
        outputs[*name] = digest.to_string().into();
        objects.push(digest);
    }
    let refs: Vec<&crate::oci::Digest> = objects.iter().collect();
    k.cache
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

    #[test]
    fn a_miss_runs_and_keeps_then_a_hit_restores_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let file = dir.path().join("out.bin");
        std::fs::write(&file, b"made by the stage").unwrap();
        let keyed = Keyed::new(Some(&c), Kind::Layer, serde_json::json!({"input": 1}));
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
            (first.value, first.cached, first.not_kept),
            ("ran", false, None)
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
        assert_eq!((second.value, second.cached), ("restored", true));
        assert_eq!(runs.get(), 1);
        // Other inputs: another key, a miss.
        let other = Keyed::new(Some(&c), Kind::Layer, serde_json::json!({"input": 2}));
        assert_ne!(other.as_ref().unwrap().key, keyed.as_ref().unwrap().key);
        let third = cached(other.as_ref(), |_, _| Some("restored"), run).unwrap();
        assert!(!third.cached);
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn a_refused_entry_runs_the_stage_and_no_cache_always_runs() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        let keyed = Keyed::new(Some(&c), Kind::Attest, serde_json::json!({"a": true}));
        let keep = || Ok::<_, String>((1, Some(Keep::outputs(serde_json::json!({})))));
        cached(keyed.as_ref(), |_, _| Some(0), keep).unwrap();
        let refused = cached(keyed.as_ref(), |_, _| None::<i32>, keep).unwrap();
        assert_eq!((refused.value, refused.cached), (1, false));
        let off = cached(None, |_, _| Some(0), keep).unwrap();
        assert_eq!((off.value, off.cached), (1, false));
        let failed = cached(
            None,
            |_, _| Some(0),
            || Err::<(i32, Option<Keep>), _>("boom"),
        );
        assert_eq!(failed.err(), Some("boom"));
    }
}
