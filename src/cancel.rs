//! Cancelling a build: one handle that reaches every child process group, every wait and every
//! retry of a build.
//!
//! `Cancel::cancel` sends SIGTERM to every process group the build has alive, wakes every
//! interruptible sleep, and after a grace period sends SIGKILL to whatever is left, recording that
//! a forced kill was needed. Children are also tagged with `GALLEY_BUILD_TAG` in their
//! environment, so a process that left its group (`setsid`) is found in /proc and stopped too.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The environment variable every child of a build carries, for the /proc sweep.
pub const TAG_ENV: &str = "GALLEY_BUILD_TAG";

/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The build was cancelled; what was being done stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cancelled: {reason}")]
pub struct Cancelled {
    pub reason: String,
}

#[derive(Debug, Default)]
struct State {
    reason: Option<String>,
    /// When the cancel came: the grace period runs from here.
    cancelled_at: Option<Instant>,
    /// Process groups (their leader's pid) the build has alive now.
    groups: BTreeSet<i32>,
    /// Whether SIGKILL had to be sent after SIGTERM.
    forced: bool,
    /// Set once the kill sequence has finished (every group gone, or killed).
    settled: bool,
}

#[derive(Debug)]
struct Inner {
    tag: String,
    grace: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// A cancel handle, cheap to clone; every clone cancels the same build.
#[derive(Debug, Clone)]
pub struct Cancel {
    inner: Arc<Inner>,
}

impl Default for Cancel {
    /// A handle nothing cancels unless asked: for one-off commands.
    fn default() -> Self {
        Cancel::new(&format!("galley-{}", std::process::id()), DEFAULT_GRACE)
    }
}

impl Cancel {
    /// A handle for a build tagged `tag` (unique per build: the sweep finds children by it).
    pub fn new(tag: &str, grace: Duration) -> Cancel {
        Cancel {
            inner: Arc::new(Inner {
                tag: tag.to_string(),
                grace,
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tag children carry in `GALLEY_BUILD_TAG`.
    pub fn tag(&self) -> &str {
        &self.inner.tag
    }

    pub fn is_cancelled(&self) -> bool {
        self.state().reason.is_some()
    }

    /// `Err(Cancelled)` once the build is cancelled: call between steps.
    pub fn check(&self) -> Result<(), Cancelled> {
        match &self.state().reason {
            Some(reason) => Err(Cancelled {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether a SIGKILL was needed to stop the build's processes.
    pub fn forced(&self) -> bool {
        self.state().forced
    }

    /// Cancels: SIGTERM to every live process group now, SIGKILL after the grace period to what
    /// is left (on a thread of its own, so this returns at once). Returns false when the handle
    /// was already cancelled (the first reason stays).
    pub fn cancel(&self, reason: &str) -> bool {
        let groups: Vec<i32> = {
            let mut s = self.state();
            if s.reason.is_some() {
                return false;
            }
            s.reason = Some(reason.to_string());
            s.cancelled_at = Some(Instant::now());
            s.groups.iter().copied().collect()
        };
        self.inner.cv.notify_all();
        for g in &groups {
            signal_group(*g, rustix::process::Signal::TERM);
        }
        sweep(&self.inner.tag, rustix::process::Signal::TERM);
        let me = self.clone();
        std::thread::spawn(move || me.finish_kill());
        true
    }

    /// Skips the rest of the grace period: SIGKILL to every live group and tagged process now
    /// (a second Ctrl-C). Cancels first if that had not happened.
    pub fn force(&self, reason: &str) {
        self.cancel(reason);
        let groups: Vec<i32> = self.state().groups.iter().copied().collect();
        let mut forced = false;
        for g in groups {
            if group_alive(g) {
                signal_group(g, rustix::process::Signal::KILL);
                forced = true;
            }
        }
        if sweep(&self.inner.tag, rustix::process::Signal::KILL) > 0 {
            forced = true;
        }
        self.state().forced |= forced;
        self.inner.cv.notify_all();
    }

    /// After the grace period (or as soon as every group is gone), SIGKILL what is left.
    fn finish_kill(&self) {
        let deadline = Instant::now() + self.inner.grace;
        let mut s = self.state();
        loop {
            s.groups.retain(|g| group_alive(*g));
            let now = Instant::now();
            if (s.groups.is_empty() && !tagged_alive(&self.inner.tag)) || now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            s = self
                .inner
                .cv
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut forced = false;
        for g in s.groups.clone() {
            if group_alive(g) {
                signal_group(g, rustix::process::Signal::KILL);
                forced = true;
            }
        }
        if sweep(&self.inner.tag, rustix::process::Signal::KILL) > 0 {
            forced = true;
        }
        s.forced |= forced;
        s.settled = true;
        drop(s);
        self.inner.cv.notify_all();
    }

    /// Waits until the kill sequence of a cancel has finished (at most the grace period plus a
    /// little). Returns whether it finished within `limit`.
    pub fn wait_settled(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut s = self.state();
        while !s.settled {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .inner
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Sleeps for `d`, waking early (with `Err`) when the build is cancelled.
    pub fn sleep(&self, d: Duration) -> Result<(), Cancelled> {
        let deadline = Instant::now() + d;
        let mut s = self.state();
        loop {
            if let Some(reason) = &s.reason {
                return Err(Cancelled {
                    reason: reason.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            s = self
                .inner
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records a live process group. If the build is already cancelled, the group is killed at
    /// once (it was spawned in a race with the cancel). The guard forgets it, killing any member
    /// still alive, when dropped.
    pub fn register(&self, pgid: i32) -> GroupGuard {
        let cancelled = {
            let mut s = self.state();
            s.groups.insert(pgid);
            s.reason.is_some()
        };
        if cancelled {
            signal_group(pgid, rustix::process::Signal::KILL);
            self.state().forced = true;
        }
        GroupGuard {
            cancel: self.clone(),
            pgid,
        }
    }
}

/// A registered process group; dropping it (after its leader was reaped) stops any member left.
pub struct GroupGuard {
    cancel: Cancel,
    pgid: i32,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // After a cancel, members the leader left behind still get the rest of the grace
        // period to end on their SIGTERM.
        let deadline = self
            .cancel
            .state()
            .cancelled_at
            .map(|t| t + self.cancel.inner.grace);
        if let Some(deadline) = deadline {
            while group_alive(self.pgid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if group_alive(self.pgid) {
            signal_group(self.pgid, rustix::process::Signal::KILL);
            if self.cancel.is_cancelled() {
                self.cancel.state().forced = true;
            }
        }
        self.cancel.state().groups.remove(&self.pgid);
        self.cancel.inner.cv.notify_all();
    }
}

/// A reader that fails once its build is cancelled: uploads and downloads stop at the next read.
pub struct CancelRead<R> {
    inner: R,
    cancel: Cancel,
}

impl<R> CancelRead<R> {
    pub fn new(inner: R, cancel: &Cancel) -> CancelRead<R> {
        CancelRead {
            inner,
            cancel: cancel.clone(),
        }
    }
}

impl<R: std::io::Read> std::io::Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Err(c) = self.cancel.check() {
            // Not `Interrupted`: io::copy and read_to_end would retry that.
            return Err(std::io::Error::other(c));
        }
        self.inner.read(buf)
    }
}

fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// One process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub pgid: i32,
    /// The state letter: R, S, D, Z (zombie), T...
    pub state: char,
}

/// Every process /proc lists now.
pub fn processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgid: i32 = fields.next()?.parse().ok()?;
        Some(ProcInfo { pid, pgid, state })
    })
    .collect()
}

/// Whether a process group has a member that is not a zombie.
pub fn group_alive(pgid: i32) -> bool {
    processes()
        .iter()
        .any(|p| p.pgid == pgid && p.state != 'Z' && p.state != 'X')
}

/// Every live process (not a zombie, not this process) that carries a `GALLEY_BUILD_TAG`, by
/// tag: one scan of /proc for a worker that starts again and must find what its builds left.
pub fn live_tags() -> std::collections::BTreeMap<String, Vec<i32>> {
    let me = std::process::id() as i32;
    let prefix = format!("{TAG_ENV}=");
    let mut out: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for p in processes() {
        if p.pid == me || p.state == 'Z' || p.state == 'X' {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{}/environ", p.pid)) else {
            continue;
        };
        let tag = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
            .and_then(|t| std::str::from_utf8(t).ok());
        if let Some(tag) = tag {
            out.entry(tag.to_string()).or_default().push(p.pid);
        }
    }
    out
}

/// The pids (not zombies, not this process) whose environment carries `GALLEY_BUILD_TAG=tag`.
pub fn tagged(tag: &str) -> Vec<i32> {
    let needle = format!("{TAG_ENV}={tag}");
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|p| p.pid != me && p.state != 'Z' && p.state != 'X')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/environ", p.pid))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|p| p.pid)
        .collect()
}

fn tagged_alive(tag: &str) -> bool {
    !tagged(tag).is_empty()
}

/// Sends `sig` to every process tagged `tag`; returns how many there were.
pub fn sweep(tag: &str, sig: rustix::process::Signal) -> usize {
    let pids = tagged(tag);
    for pid in &pids {
        if let Some(p) = rustix::process::Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(p, sig);
        }
    }
    pids.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_wakes_on_cancel() {
        let c = Cancel::new("t-sleep", Duration::from_secs(1));
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            let started = Instant::now();
            let r = c2.sleep(Duration::from_secs(30));
            (r, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(c.cancel("test"));
        assert!(!c.cancel("again"), "the first reason stays");
        let (r, took) = t.join().unwrap();
        assert_eq!(r.unwrap_err().reason, "test");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(c.wait_settled(Duration::from_secs(5)));
        assert!(!c.forced());
    }

    #[test]
    fn parses_this_process_from_proc() {
        let me = std::process::id() as i32;
        let p = processes().into_iter().find(|p| p.pid == me).unwrap();
        assert_eq!(p.pgid, rustix::process::getpgrp().as_raw_nonzero().get());
    }
}
