//! The one git runner (`git -C DIR ARGS...` as argv, never prompting, with a timeout, stopped by
//! the build's `Cancel`) and the facts galley reads from a project's repository.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use crate::cancel::{Cancel, Cancelled};
use crate::proc;

/// A git command that did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Runs `git -C dir ARGS...`; returns its trimmed stdout. `what` in an error is the subcommand.
pub fn run<S: AsRef<OsStr>>(
    dir: &Path,
    args: &[S],
    timeout: Duration,
    cancel: &Cancel,
) -> Result<String, GitError> {
    let what = args
        .first()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = proc::command("git");
    cmd.arg("-C").arg(dir).args(args);
    // Never ask for credentials on a terminal galley does not have.
    cmd.env("GIT_TERMINAL_PROMPT", "0");
    let out = proc::run_captured(&mut cmd, timeout, cancel);
    // A cancel is the cause of whatever went wrong after it.
    cancel.check()?;
    let out = out.map_err(|e| GitError::Failed {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(GitError::Failed {
            what,
            detail: out.stderr_tail(5),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A full git commit id: 40 hex digits.
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Facts read from git about the project's HEAD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitFacts {
    pub revision: Option<String>,
    pub commit_time: Option<u64>,
    /// Whether the project's directory has changes HEAD does not hold (absent outside git).
    pub dirty: Option<bool>,
}

/// Reads the HEAD commit and its time; an empty result outside a git repository.
pub fn facts(project: &Path) -> GitFacts {
    let cancel = Cancel::default();
    let ask = |args: &[&str]| run(project, args, Duration::from_secs(30), &cancel).ok();
    let revision = ask(&["rev-parse", "--verify", "HEAD"]).filter(|s| is_commit(s));
    // A directory inside some repository but not tracked by it (a copy under an ignored
    // target/, say) is not at that repository's commit: it is outside git.
    let tracked =
        revision.is_some() && ask(&["ls-files", "--error-unmatch", "--", "Cargo.toml"]).is_some();
    if !tracked {
        return GitFacts::default();
    }
    let commit_time = ask(&["log", "-1", "--format=%ct"]).and_then(|s| s.parse().ok());
    // Only the project's own directory counts (a workspace's other members do not).
    let dirty = ask(&[
        "status",
        "--porcelain",
        "--untracked-files=normal",
        "--",
        ".",
    ])
    .map(|s| !s.is_empty());
    GitFacts {
        revision,
        commit_time,
        dirty,
    }
}
