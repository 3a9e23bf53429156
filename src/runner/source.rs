//! Where a build's sources come from: a project directory as it is, or a clean worktree of a
//! commit of a git repository, fetched into a mirror under the data directory.
//!
//! git runs as argv through `proc`, never through a shell; a ref has passed `is_ref` first and
//! is given after `--end-of-options`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::cancel::Cancel;
use crate::config::serve::{Project, Source};
use crate::config::{CargoPackage, ProjectConfig};
use crate::proc;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git {what} failed: {detail}")]
    Git { what: String, detail: String },
    #[error(
        "ref {0:?} is not in the repository: push it, or name a branch, tag or commit that exists"
    )]
    UnknownRef(String),
    #[error("cannot read the project: {0}")]
    Project(String),
    #[error("stopped: {0}")]
    Cancelled(String),
}

/// A ref a request may name: a branch, tag or commit, in git's own syntax minus everything that
/// could be an option or a revision expression.
pub fn is_ref(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 200
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._/-".contains(c))
        && !s.contains("..")
        && !s.contains("//")
        && !s.ends_with('/')
        && !s.ends_with(".lock")
        && !s.ends_with('.')
}

/// The sources of one build, ready for cargo.
pub struct Checkout {
    /// The directory cargo builds.
    pub dir: PathBuf,
    /// The commit, when the project is in git.
    pub commit: Option<String>,
    /// Whether the directory differs from the commit (a path project only; a worktree is clean).
    pub dirty: Option<bool>,
    /// The worktree to remove when the build ends.
    worktree: Option<(PathBuf, PathBuf)>,
}

impl Checkout {
    /// Removes the worktree (a path project has nothing to remove).
    pub fn remove(self) {
        if let Some((mirror, dir)) = self.worktree {
            let lock = mirror_lock(&mirror);
            let _turn = lock.lock().unwrap_or_else(|e| e.into_inner());
            let cancel = Cancel::default();
            let remove = [
                "worktree".as_ref(),
                "remove".as_ref(),
                "--force".as_ref(),
                dir.as_os_str(),
            ];
            let _ = git(&mirror, &remove, &cancel);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = git(&mirror, &["worktree", "prune"], &cancel);
        }
    }
}

/// Runs `git -C repo ARGS...`; returns its trimmed stdout.
fn git<S: AsRef<std::ffi::OsStr>>(
    repo: &Path,
    args: &[S],
    cancel: &Cancel,
) -> Result<String, SourceError> {
    Ok(crate::git::run(
        repo,
        args,
        Duration::from_secs(600),
        cancel,
    )?)
}

impl From<crate::git::GitError> for SourceError {
    fn from(e: crate::git::GitError) -> Self {
        match e {
            crate::git::GitError::Failed { what, detail } => SourceError::Git { what, detail },
            crate::git::GitError::Cancelled(c) => SourceError::Cancelled(c.reason),
        }
    }
}

/// The lock of one mirror: every git operation on it in this process (the API reading a
/// project's galley.toml, the workers checking out) takes turns, so concurrent first requests
/// make one clone and the others wait for it. (One process per data directory: `lock`.)
fn mirror_lock(mirror: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(mirror.to_path_buf())
        .or_default()
        .clone()
}

/// Runs `f` holding the mirror's lock.
fn locked<T>(mirror: &Path, f: impl FnOnce() -> T) -> T {
    let lock = mirror_lock(mirror);
    let _turn = lock.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

fn mirror_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("git").join(format!("{name}.git"))
}

/// The bare mirror of a git project, fetched now (created the first time). The caller holds
/// the mirror's lock.
fn fetch_mirror(
    data_dir: &Path,
    name: &str,
    url: &str,
    cancel: &Cancel,
) -> Result<PathBuf, SourceError> {
    let mirror = mirror_path(data_dir, name);
    if mirror.join("HEAD").is_file() {
        git(&mirror, &["fetch", "--prune", "--tags", "origin"], cancel)?;
    } else {
        std::fs::create_dir_all(mirror.parent().expect("has a parent")).map_err(|e| {
            SourceError::Git {
                what: "clone".into(),
                detail: e.to_string(),
            }
        })?;
        // Cloned beside and renamed into place: a clone that fails or is killed half-way never
        // looks like a mirror.
        let partial = mirror.with_extension(format!("git.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        let mut cmd = proc::command("git");
        cmd.args(["clone", "--mirror", "--quiet", "--"])
            .arg(url)
            .arg(&partial)
            .env("GIT_TERMINAL_PROMPT", "0");
        let out = proc::run_captured(&mut cmd, Duration::from_secs(1800), cancel);
        let failed = |detail: String| {
            let _ = std::fs::remove_dir_all(&partial);
            SourceError::Git {
                what: "clone".into(),
                detail,
            }
        };
        let out = out.map_err(|e| failed(e.to_string()))?;
        if !out.status.success() {
            return Err(failed(out.stderr_tail(3)));
        }
        let _ = std::fs::remove_dir_all(&mirror);
        std::fs::rename(&partial, &mirror).map_err(|e| failed(e.to_string()))?;
    }
    Ok(mirror)
}

/// Resolves a ref to a commit in the mirror.
pub fn resolve_ref(mirror: &Path, r: &str, cancel: &Cancel) -> Result<String, SourceError> {
    let spec = format!("{r}^{{commit}}");
    git(
        mirror,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
        cancel,
    )
    .map_err(|e| match e {
        SourceError::Git { .. } => SourceError::UnknownRef(r.to_string()),
        other => other,
    })
}

/// Prepares the sources of a build: the project directory, or a worktree of `git_ref` (default
/// the repository's HEAD) at `work`.
pub fn checkout(
    data_dir: &Path,
    project: &Project,
    git_ref: Option<&str>,
    work: &Path,
    cancel: &Cancel,
) -> Result<Checkout, SourceError> {
    match &project.source {
        Source::Path(dir) => {
            let facts = crate::git::facts(dir);
            Ok(Checkout {
                dir: dir.clone(),
                commit: facts.revision,
                dirty: facts.dirty,
                worktree: None,
            })
        }
        Source::Git(url) => locked(&mirror_path(data_dir, &project.name), || {
            let mirror = fetch_mirror(data_dir, &project.name, url, cancel)?;
            let commit = resolve_ref(&mirror, git_ref.unwrap_or("HEAD"), cancel)?;
            let _ = std::fs::remove_dir_all(work);
            let add = [
                "worktree".as_ref(),
                "add".as_ref(),
                "--detach".as_ref(),
                "--force".as_ref(),
                "--quiet".as_ref(),
                work.as_os_str(),
                commit.as_ref(),
            ];
            git(&mirror, &add, cancel)?;
            Ok(Checkout {
                dir: work.to_path_buf(),
                commit: Some(commit),
                dirty: Some(false),
                worktree: Some((mirror, work.to_path_buf())),
            })
        }),
    }
}

/// What a project offers to build: its variants (name and features) and its crate version.
#[derive(Debug, Clone)]
pub struct Offer {
    pub variants: Vec<(String, Vec<String>)>,
    pub version: Option<String>,
    /// The project's galley.toml as read (defaults when it has none).
    pub config: ProjectConfig,
}

/// Reads a project's galley.toml and Cargo.toml: from the directory, or for a git project from
/// the mirror (fetched when there is none yet) at `git_ref`, else at its HEAD. A ref the mirror
/// does not have yet reads HEAD: the build's own fetch decides whether it exists.
pub fn offer(
    data_dir: &Path,
    project: &Project,
    git_ref: Option<&str>,
) -> Result<Offer, SourceError> {
    let (config, package) = match &project.source {
        Source::Path(dir) => (
            ProjectConfig::load(dir).map_err(|e| SourceError::Project(e.to_string()))?,
            CargoPackage::load(dir).map_err(|e| SourceError::Project(e.to_string()))?,
        ),
        Source::Git(url) => {
            let mirror = mirror_path(data_dir, &project.name);
            let cancel = Cancel::default();
            locked(&mirror, || {
                if mirror.join("HEAD").is_file() {
                    return Ok(mirror.clone());
                }
                fetch_mirror(data_dir, &project.name, url, &cancel)
            })?;
            let at = match git_ref.map(|r| resolve_ref(&mirror, r, &cancel)) {
                None | Some(Err(SourceError::UnknownRef(_))) => "HEAD".to_string(),
                Some(Ok(commit)) => commit,
                Some(Err(e)) => return Err(e),
            };
            let show = |file: &str| git(&mirror, &["show", &format!("{at}:{file}")], &cancel);
            let config = match show(crate::config::FILE_NAME) {
                Ok(text) => ProjectConfig::parse(&text).map_err(SourceError::Project)?,
                Err(_) => ProjectConfig::default(),
            };
            let cargo = show("Cargo.toml")?;
            let package = CargoPackage::parse(Path::new("Cargo.toml"), &cargo)
                .map_err(|e| SourceError::Project(e.to_string()))?;
            (config, package)
        }
    };
    Ok(Offer {
        variants: config.variants_offered(&package),
        version: package.version,
        config,
    })
}

/// A commit since the last released version, as `versions/next` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: String,
    pub subject: String,
    pub body: String,
}

/// What git says about a project's releases: its `vX.Y.Z` tags, and the commits on HEAD since
/// the tag of `since` (all of HEAD's, at most 500, when there is no such tag). `None` when the
/// project is not in git. A git project reads its mirror (as the service last fetched it).
pub fn release_history(
    data_dir: &Path,
    project: &Project,
    mut since: impl FnMut(&[semver::Version]) -> Option<semver::Version>,
) -> Option<(Vec<semver::Version>, Vec<Commit>)> {
    let cancel = Cancel::default();
    let quick = |repo: &Path, args: &[&str]| {
        crate::git::run(repo, args, Duration::from_secs(30), &cancel).ok()
    };
    let repo = match &project.source {
        Source::Path(dir) => {
            quick(dir, &["rev-parse", "--git-dir"])?;
            dir.clone()
        }
        Source::Git(_) => {
            let mirror = mirror_path(data_dir, &project.name);
            mirror.join("HEAD").is_file().then_some(mirror)?
        }
    };
    let tags: Vec<semver::Version> = quick(&repo, &["tag", "--list", "v*"])?
        .lines()
        .filter_map(|t| semver::Version::parse(t.trim().strip_prefix('v')?).ok())
        .collect();
    let range = match since(&tags) {
        Some(v) => format!("v{v}..HEAD"),
        None => "HEAD".into(),
    };
    // Fields split by US, records by RS: subjects and bodies may hold anything else.
    let log = quick(
        &repo,
        &[
            "log",
            "--max-count=500",
            "--format=%H%x1f%s%x1f%b%x1e",
            &range,
        ],
    )
    .unwrap_or_default();
    let commits = log
        .split('\x1e')
        .filter_map(|rec| {
            let mut f = rec.trim_start_matches('\n').splitn(3, '\x1f');
            let id = f.next()?.trim().to_string();
            (!id.is_empty()).then(|| Commit {
                id,
                subject: f.next().unwrap_or_default().to_string(),
                body: f.next().unwrap_or_default().trim().to_string(),
            })
        })
        .collect();
    Some((tags, commits))
}

#[cfg(test)]
mod tests {
    use super::is_ref;

    #[test]
    fn refs_are_allow_listed() {
        for ok in [
            "main",
            "v1.4.2",
            "release/1.x",
            "feature/db_psql",
            "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
        ] {
            assert!(is_ref(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=touch /tmp/x",
            "main;id",
            "$(id)",
            "a b",
            "HEAD~1",
            "main^{tree}",
            "a..b",
            "x/",
            "x.lock",
            "@{-1}",
            "a\nb",
            "../etc",
            "/abs",
            "x//y",
            "main.",
        ] {
            assert!(!is_ref(bad), "{bad:?}");
        }
    }
}
