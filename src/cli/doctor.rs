//! `galley doctor`.

use anyhow::Context as _;

use super::DoctorArgs;
use crate::registry::doctor::diagnose;
use crate::registry::Reference;

/// Runs the checks; `Ok(false)` when one fails (exit 1).
pub fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    let repo = Reference::parse(&args.repository).context("the repository")?;
    anyhow::ensure!(
        repo.tag.is_none() && repo.digest.is_none(),
        "{} names a tag or digest: give the repository alone (host/repo)",
        args.repository
    );
    let base = args
        .base
        .as_deref()
        .map(Reference::parse)
        .transpose()
        .context("--base")?;
    let options = args.registry.options()?;
    let diagnosis = diagnose(&repo, base.as_ref(), &options);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diagnosis)?);
    } else {
        print!("{}", diagnosis.human());
    }
    Ok(!diagnosis.failed())
}
