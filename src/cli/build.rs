//! `galley build`.

use std::io::Write;
use std::sync::Mutex;

use anyhow::Context;

use super::BuildArgs;
use crate::pipeline::{self, LogLine};
use crate::spec::{BuildRequest, BuildSpec};
use crate::toolchain::CargoZigbuild;

/// Runs a build; returns whether every variant succeeded.
pub fn run(args: BuildArgs) -> anyhow::Result<bool> {
    let req = BuildRequest {
        project: args.project,
        variants: args.variants,
        version: args.version,
        base: args.base,
        output: args.output,
        targets: args.targets,
        tags: args.tags,
        no_compress: args.no_compress,
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        upx: args.upx,
        credential: super::credential(&args.registry)?,
        push: args.push,
        insecure_registries: args.registry.insecure_registries,
        ca_bundle: args.registry.ca_bundle,
        refresh_base: args.refresh_base,
        cache_dir: None,
    };
    let spec = BuildSpec::resolve(&req)?;
    let stderr = Mutex::new(std::io::stderr());
    let log = |line: &LogLine<'_>| {
        let mut err = stderr.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            err,
            "[{} {}] {}: {}",
            line.variant,
            line.target.platform().architecture,
            line.stage,
            line.message
        );
    };
    let toolchain = CargoZigbuild::default();
    let report = pipeline::run(&spec, &toolchain, &log)?;
    eprint!("{}", report.human());
    if args.json {
        let json = serde_json::to_string_pretty(&report).context("serializing the report")?;
        println!("{json}");
    }
    Ok(report.succeeded)
}
