//! `galley repro REPORT`: build a recorded build again and say whether every digest matches.

use std::sync::Mutex;

use anyhow::Context as _;

use super::build::{cancel_on_signals, Printer};
use super::ReproArgs;
use crate::cancel::{Cancel, DEFAULT_GRACE};
use crate::repro::{self, ReproError, ReproRequest};

/// How `galley repro` ended.
pub enum Outcome {
    /// Every digest matches (exit 0) or something differs (exit 1).
    Compared { identical: bool },
    /// Ctrl-C: every child stopped, the fresh directory removed.
    Interrupted,
}

/// Prepares, prints the tool check, rebuilds and prints the verdict.
pub fn run(args: ReproArgs) -> anyhow::Result<Outcome> {
    let req = ReproRequest {
        report: args.report,
        source_date_epoch: args.source_date_epoch,
        work_parent: args.work_dir,
        keep: args.keep,
        keep_output: false,
        upx: args.upx,
        cache_dir: None,
        insecure_registries: args.insecure_registries,
        ca_bundle: args.ca_bundle,
        sources: None,
    };
    let cancel = Cancel::new(
        &format!("galley-repro-{}", std::process::id()),
        DEFAULT_GRACE,
    );
    cancel_on_signals(&cancel)?;
    let result = repro::prepare(&req, &cancel).and_then(|plan| {
        // Tool versions first: a differing tool explains most differences.
        for t in &plan.tools {
            eprintln!(
                "galley repro: {}: {} (recorded {}, here {})",
                t.tool,
                t.status,
                t.recorded.as_deref().unwrap_or("-"),
                t.current.as_deref().unwrap_or("-")
            );
        }
        let printer = Printer {
            stderr: Mutex::new(std::io::stderr()),
        };
        repro::rebuild(plan, &printer, &cancel, None)
    });
    let verdict = match result {
        Ok(v) => v,
        Err(ReproError::Cancelled(c)) => {
            cancel.wait_settled(DEFAULT_GRACE + std::time::Duration::from_secs(5));
            eprintln!("galley: {c}; every child process stopped, the fresh directory removed");
            return Ok(Outcome::Interrupted);
        }
        Err(e) => return Err(e.into()),
    };
    eprint!("{}", verdict.human());
    if args.json {
        let json = serde_json::to_string_pretty(&verdict).context("serializing the verdict")?;
        println!("{json}");
    }
    Ok(Outcome::Compared {
        identical: verdict.identical,
    })
}
