//! Compile slots: a `Toolchain` decorator that lets at most N compiles run at once across every
//! build that shares the slots (the service's `compile_slots`), whatever toolchain it wraps.

use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::{CompileError, CompileRequest, Compiled, ToolVersions, Toolchain};
use crate::cancel::{Cancel, Cancelled};

/// A counting semaphore for compiles, shared by the builds of a service. Waiting for a slot
/// ends when the build is cancelled.
#[derive(Debug)]
pub struct CompileSlots {
    free: Mutex<usize>,
    cv: Condvar,
}

/// A compile slot, given back when dropped.
pub struct CompileSlot<'a> {
    slots: &'a CompileSlots,
}

impl CompileSlots {
    pub fn new(slots: usize) -> CompileSlots {
        CompileSlots {
            free: Mutex::new(slots.max(1)),
            cv: Condvar::new(),
        }
    }

    /// Takes a slot, waiting for one; `Err` when the build is cancelled while waiting.
    pub fn acquire(&self, cancel: &Cancel) -> Result<CompileSlot<'_>, Cancelled> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            cancel.check()?;
            if *free > 0 {
                *free -= 1;
                return Ok(CompileSlot { slots: self });
            }
            free = self
                .cv
                .wait_timeout(free, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Slots free now (for metrics and tests).
    pub fn available(&self) -> usize {
        *self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for CompileSlot<'_> {
    fn drop(&mut self) {
        *self.slots.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.slots.cv.notify_one();
    }
}

/// `inner`, with each compile holding one of `slots` while it runs.
pub struct Limited<'a> {
    pub inner: &'a dyn Toolchain,
    pub slots: &'a CompileSlots,
}

impl Toolchain for Limited<'_> {
    fn compile(
        &self,
        req: &CompileRequest<'_>,
        cancel: &Cancel,
        log: &(dyn Fn(&str) + Sync),
    ) -> Result<Compiled, CompileError> {
        if self.slots.available() == 0 {
            log("galley: waiting for a compile slot");
        }
        let _slot = self
            .slots
            .acquire(cancel)
            .map_err(|c| CompileError::Cancelled(c.reason))?;
        self.inner.compile(req, cancel, log)
    }

    fn versions(&self, project: &Path) -> ToolVersions {
        self.inner.versions(project)
    }

    fn fingerprint(
        &self,
        req: &CompileRequest<'_>,
        tools: &ToolVersions,
    ) -> Result<serde_json::Value, String> {
        self.inner.fingerprint(req, tools)
    }
}
