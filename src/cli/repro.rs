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
    let Some(report) = args.report.clone() else {
        return remote(&args);
    };
    let req = ReproRequest {
        report,
        source_date_epoch: args.source_date_epoch.clone(),
        work_parent: args.work_dir.clone(),
        keep: args.keep,
        keep_output: false,
        upx: args.upx.clone(),
        cache_dir: None,
        insecure_registries: args.insecure_registries.clone(),
        ca_bundle: args.ca_bundle.clone(),
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
            eprintln!("galley repro: {}", t.line());
        }
        let printer = Printer {
            stderr: Mutex::new(std::io::stderr()),
            verbosity: Default::default(),
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

/// The message of a service's error answer (`{"error": {"message", "hint"}}`), else the body.
fn api_error(status: reqwest::StatusCode, body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match v["error"]["message"].as_str() {
        Some(m) => match v["error"]["hint"].as_str() {
            Some(h) => format!("{status}: {m} ({h})"),
            None => format!("{status}: {m}"),
        },
        None => format!("{status}: {}", body.chars().take(300).collect::<String>()),
    }
}

/// `--build ID`: the service reproduces its build; this follows the repro to its verdict. A
/// Ctrl-C cancels the repro on the service.
fn remote(args: &ReproArgs) -> anyhow::Result<Outcome> {
    let id = args.build.context("give a report or --build ID")?;
    let server = args.server.trim_end_matches('/');
    anyhow::ensure!(
        server.starts_with("http://") || server.starts_with("https://"),
        "--server {server:?} is not an http(s) URL (e.g. http://127.0.0.1:8700)"
    );
    // The token only from the environment: never in argv, where `ps` shows it.
    let token = std::env::var("GALLEY_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot make an HTTP client")?;
    let send = |rb: reqwest::blocking::RequestBuilder| {
        let rb = match &token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let r = rb
            .send()
            .with_context(|| format!("cannot reach the service at {server}"))?;
        let status = r.status();
        let body = r.text().unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("{}", api_error(status, &body));
        }
        serde_json::from_str::<serde_json::Value>(&body)
            .with_context(|| format!("the service answered {status} with no JSON"))
    };
    let queued = send(
        client
            .post(format!("{server}/api/v1/builds/{id}/repro"))
            .header(reqwest::header::CONTENT_TYPE, "application/json"),
    )
    .with_context(|| format!("asking {server} to reproduce build {id}"))?;
    let repro = queued["id"]
        .as_i64()
        .context("the service's answer has no build id")?;
    eprintln!(
        "galley repro: the service reproduces build {id} as build {repro}; waiting for its verdict"
    );
    let cancel = Cancel::new(
        &format!("galley-repro-{}", std::process::id()),
        DEFAULT_GRACE,
    );
    cancel_on_signals(&cancel)?;
    let record = loop {
        if cancel.sleep(std::time::Duration::from_millis(500)).is_err() {
            let _ = send(
                client
                    .post(format!("{server}/api/v1/builds/{repro}/cancel"))
                    .header(reqwest::header::CONTENT_TYPE, "application/json"),
            );
            eprintln!("galley: interrupted: repro build {repro} cancelled on the service");
            return Ok(Outcome::Interrupted);
        }
        let r = send(client.get(format!("{server}/api/v1/builds/{repro}")))?;
        if !matches!(r["status"].as_str(), Some("queued" | "running")) {
            break r;
        }
    };
    let Some(verdict) = record.get("verdict").filter(|v| !v.is_null()) else {
        anyhow::bail!(
            "repro build {repro} ended {} without a verdict: {}",
            record["status"].as_str().unwrap_or("?"),
            record["error"].as_str().unwrap_or("no error recorded")
        );
    };
    let verdict: repro::Verdict =
        serde_json::from_value(verdict.clone()).context("the service's verdict is unreadable")?;
    eprint!("{}", verdict.human());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    }
    Ok(Outcome::Compared {
        identical: verdict.identical,
    })
}
