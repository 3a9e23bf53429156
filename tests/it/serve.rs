//! `galley serve` end to end: a real service process, real HTTP, real cargo-zigbuild builds of
//! the tiny fixture, a fake registry with basic auth for pushes. What it produced is checked
//! with skopeo; what it logged and stored is searched for secrets.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::cancel::{slow_project, survivors, wait_for_tree};
use crate::fake_registry::{FakeRegistry, Faults};
use crate::service::{git, Service, Sse};
use crate::support::{base_arg, copy_fixture, heavy, require, run_ok, scratch};

const TOKEN: &str = "sentinel-api-token-0123456789";
const PASSWORD: &str = "sentinel-registry-password-42";

fn tiny_project(dir: &Path) -> String {
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    project.display().to_string()
}

/// Every file under `dir` (the database and its WAL included), as lossy text.
fn everything_in(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.push_str(&everything_in(&p));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn stage_statuses(events: &[Sse], variant: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| {
            e.kind == "stage" && e.data["variant"] == variant && e.data["status"] != "running"
        })
        .map(|e| {
            (
                e.data["stage"].as_str().unwrap().to_string(),
                e.data["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn serve_builds_pushes_streams_and_records_without_leaking_secrets() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("serve-build");
    let project = tiny_project(&dir);
    let fake = FakeRegistry::start(Faults {
        basic_auth: Some(("ci-bot".into(), PASSWORD.into())),
        ..Default::default()
    });
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci-bot:{PASSWORD}"));
    std::fs::write(
        docker.join("config.json"),
        json!({"auths": {fake.host(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let config = format!(
        "[projects.tiny]\npath = \"{project}\"\nbase = \"{}\"\npush = \"{}/team/tiny\"\n",
        base_arg(),
        fake.host()
    );
    let svc = Service::start(
        &dir.join("svc"),
        &config,
        Some(TOKEN),
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
    );

    let (status, projects) = svc.get("/api/v1/projects");
    assert_eq!(status, 200);
    let names: Vec<&str> = projects[0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mysql", "postgres", "sqlite"]);
    let (_, reg) = svc.get("/api/v1/registry?project=tiny");
    assert_eq!(
        (
            &reg["found"],
            &reg["username"],
            &reg["origin"],
            &reg["entry"]
        ),
        (
            &json!(true),
            &json!("ci-bot"),
            &json!("DOCKER_CONFIG"),
            &json!("auths")
        ),
        "{reg}"
    );

    let id =
        svc.submit(json!({"variants": ["sqlite", "postgres"], "version": "1.4.2", "push": true}));
    // A live follower from the start, and one that drops mid-build and resumes.
    let live = {
        let (url, token) = (svc.url.clone(), TOKEN.to_string());
        std::thread::spawn(move || {
            let probe = ServiceRef { url, token };
            probe.all(id)
        })
    };
    let mut first_half = Vec::new();
    {
        let mut r = svc.stream(id, None);
        while let Some(e) = r.next_event() {
            let done = e.kind == "stage"
                && e.data["variant"] == "sqlite"
                && e.data["stage"] == "compile"
                && e.data["status"] == "succeeded";
            first_half.push(e);
            if done {
                break;
            }
        }
    } // connection dropped mid-build
    let last = first_half.last().unwrap().id;
    let second_half = svc.all_events(id, Some(last));
    let resumed: Vec<Sse> = first_half.into_iter().chain(second_half).collect();
    let live = live.join().unwrap();
    let replayed = svc.all_events(id, None);
    assert_eq!(resumed, replayed, "resuming lost or repeated events");
    assert_eq!(
        live, replayed,
        "the live stream differs from the stored one"
    );
    let ids: Vec<i64> = replayed.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    let end = replayed.last().unwrap();
    assert_eq!(
        (end.kind.as_str(), &end.data["status"]),
        ("end", &json!("succeeded")),
        "{:?}",
        end.data
    );
    let every = [
        "compile", "verify", "strip", "compress", "layer", "assemble", "attest", "push",
    ];
    for v in ["sqlite", "postgres"] {
        let stages = stage_statuses(&replayed, v);
        assert_eq!(
            stages,
            every
                .iter()
                .map(|s| (s.to_string(), "succeeded".to_string()))
                .collect::<Vec<_>>(),
            "{v}"
        );
    }
    assert!(replayed.iter().any(|e| e.kind == "log"
        && e.data["stream"] == "stderr"
        && e.data["line"]
            .as_str()
            .unwrap()
            .contains("Finished `release` profile")));

    let (_, rec) = svc.get(&format!("/api/v1/builds/{id}"));
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["started_by"], "api");
    assert!(
        rec["tools"]["rustc"]
            .as_str()
            .unwrap()
            .starts_with("rustc "),
        "{rec}"
    );
    assert!(
        rec["tools"]["upx"].as_str().unwrap().starts_with("upx "),
        "{rec}"
    );
    let out = Path::new(rec["report"]["output"].as_str().unwrap()).to_path_buf();
    for v in rec["variants"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let digest = v["digest"].as_str().unwrap();
        assert_eq!(
            v["references"][0],
            format!("{}/team/tiny:{name}-1.4.2@{digest}", fake.host())
        );
        assert_eq!(v["stages"].as_array().unwrap().len(), 8);
        let inspected = crate::support::skopeo_inspect(&out, &format!("{name}-1.4.2"), false);
        assert_eq!(inspected["Digest"], digest);
    }
    assert_eq!(fake.tags("team/tiny"), ["postgres-1.4.2", "sqlite-1.4.2"]);
    let (_, log) = svc.text(&format!("/api/v1/builds/{id}/log"));
    assert!(
        log.contains("Compiling tiny") && log.contains("build succeeded"),
        "{log}"
    );

    let (_, next) = svc.get("/api/v1/versions/next?project=tiny&bump=minor");
    assert_eq!(
        (
            &next["source"],
            &next["current"],
            &next["next"],
            &next["patch"]
        ),
        (
            &json!("registry"),
            &json!("1.4.2"),
            &json!("1.5.0"),
            &json!("1.4.3")
        ),
        "{next}"
    );

    // The same inputs again: the same images, byte for byte.
    let (status, _, again) = svc.post(&format!("/api/v1/builds/{id}/rebuild"), None, &[]);
    assert_eq!(status, 202);
    let again_id = again["id"].as_i64().unwrap();
    let again = svc.wait_final(again_id, Duration::from_secs(300));
    assert_eq!(again["status"], "succeeded");
    for (a, b) in rec["variants"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["variants"].as_array().unwrap())
    {
        assert_eq!(a["digest"], b["digest"]);
    }
    let (_, page) = svc.get("/api/v1/builds?limit=1");
    assert_eq!(page["builds"][0]["id"], again_id);
    assert_eq!(page["next_before"], again_id);
    let (_, page) = svc.get(&format!(
        "/api/v1/builds?limit=1&before={again_id}&status=succeeded"
    ));
    assert_eq!(page["builds"][0]["id"], id);
    let (_, metrics) = svc.text("/metrics");
    assert!(
        metrics.contains("galley_builds_total{status=\"succeeded\"} 2"),
        "{metrics}"
    );
    // The rebuild's compile came from the stage cache; requests are counted by route pattern.
    for want in [
        "galley_stage_cache_total{stage=\"compile\",result=\"miss\",tier=\"none\"}",
        "galley_stage_cache_total{stage=\"compile\",result=\"hit\",tier=\"local\"}",
        &format!("galley_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "galley_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/builds/{id}\",status=\"200\"}",
        "galley_sse_streams_open ",
    ] {
        assert!(metrics.contains(want), "no {want} in\n{metrics}");
    }
    // Stage buckets reach past an hour: a cold compile is counted, not lost in +Inf.
    let top = metrics
        .lines()
        .filter(|l| l.starts_with("galley_stage_duration_seconds_bucket"))
        .filter_map(|l| {
            l.split("le=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .fold(0.0, f64::max);
    assert!(top > 3600.0, "the highest stage bucket is {top} s");
    // The access log names the route and the token's name, never the token.
    let log = svc.stderr();
    assert!(
        log.lines().any(|l| l.contains("galley::access")
            && l.contains("route=/api/v1/builds/{id}")
            && l.contains("status=200")
            && l.contains("token=api")),
        "{log}"
    );

    // No secret anywhere: database, outputs, the service's log, the events.
    let stored = everything_in(&svc.dir);
    let events =
        serde_json::to_string(&replayed.iter().map(|e| &e.data).collect::<Vec<_>>()).unwrap();
    for secret in [TOKEN, PASSWORD, auth.as_str()] {
        assert!(
            !stored.contains(secret),
            "a secret is in the data directory or the log"
        );
        assert!(!events.contains(secret));
        assert!(!reg.to_string().contains(secret));
    }

    assert_eq!(svc.delete(&format!("/api/v1/builds/{id}")), 204);
    assert_eq!(svc.get(&format!("/api/v1/builds/{id}")).0, 404);
    assert!(!out.exists(), "{} left after DELETE", out.display());
    assert_eq!(svc.delete(&format!("/api/v1/builds/{id}")), 404);
}

/// A second handle on a service for another thread.
struct ServiceRef {
    url: String,
    token: String,
}

impl ServiceRef {
    fn all(&self, id: i64) -> Vec<Sse> {
        let resp = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .unwrap()
            .get(format!("{}/api/v1/builds/{id}/events", self.url))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        let mut r = crate::service::SseReader::new(Box::new(resp));
        let mut out = Vec::new();
        while let Some(e) = r.next_event() {
            let end = e.kind == "end";
            out.push(e);
            if end {
                break;
            }
        }
        out
    }
}

#[test]
fn serve_builds_a_git_project_at_the_ref_asked_for() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("serve-git");
    let repo = dir.join("repo");
    copy_fixture("tiny", &repo);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    let main_rs = repo.join("src/main.rs");
    let text = std::fs::read_to_string(&main_rs).unwrap();
    std::fs::write(&main_rs, format!("{text}\n// a second commit\n")).unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);

    let config = format!(
        "compile_slots = 1\n[projects.tiny]\ngit = \"{}\"\nbase = \"{}\"\n",
        repo.display(),
        base_arg()
    );
    let svc = Service::start(&dir.join("svc"), &config, None, &[]);
    let at_tag = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0", "ref": "v1"}));
    let at_head = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let missing =
        svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0", "ref": "no-such-branch"}));
    let a = svc.wait_final(at_tag, Duration::from_secs(300));
    let b = svc.wait_final(at_head, Duration::from_secs(300));
    let m = svc.wait_final(missing, Duration::from_secs(300));
    assert_eq!(
        (a["status"].as_str(), b["status"].as_str()),
        (Some("succeeded"), Some("succeeded")),
        "{a}\n{b}"
    );
    assert_eq!((&a["commit"], &a["dirty"]), (&json!(first), &json!(false)));
    assert_eq!(b["commit"], json!(second));
    assert_eq!(a["inputs"]["ref"], "v1");
    // The commit time is the epoch: both commits were made at 1700000000.
    assert_eq!(a["report"]["source_date_epoch"], 1_700_000_000);
    assert_eq!(a["report"]["revision"], json!(first));
    // Different sources, different binaries; the cargo target directory is shared.
    assert_ne!(a["variants"][0]["digest"], b["variants"][0]["digest"]);
    let targets = std::fs::read_dir(dir.join("svc/data/targets"))
        .unwrap()
        .count();
    assert_eq!(targets, 1);
    assert_eq!(m["status"], "failed");
    assert!(
        m["error"].as_str().unwrap().contains("no-such-branch"),
        "{m}"
    );
    // Worktrees are removed when builds end.
    for id in [at_tag, at_head, missing] {
        assert!(!dir.join(format!("svc/data/builds/{id}/src")).exists());
    }

    // A repro of the build at v1 (HEAD has moved on since): the recorded commit is checked out
    // again, built without the stage cache, and every digest matches.
    let (status, _, accepted) = svc.post(&format!("/api/v1/builds/{at_tag}/repro"), None, &[]);
    assert_eq!(status, 202, "{accepted}");
    let r = accepted["id"].as_i64().unwrap();
    let rec = svc.wait_final(r, Duration::from_secs(300));
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["inputs"]["repro_of"], at_tag);
    assert_eq!(rec["inputs"]["ref"], json!(first));
    let verdict = &rec["verdict"];
    assert_eq!(verdict["identical"], true, "{verdict}");
    assert!(
        verdict["sources"].as_str().unwrap().contains(&first),
        "{verdict}"
    );
    assert_eq!(
        verdict["variants"][0]["rebuilt"],
        a["variants"][0]["digest"]
    );
    // cargo really ran (no stage cache) and the log says what was compared.
    let (_, log) = svc.text(&format!("/api/v1/builds/{r}/log"));
    assert!(log.contains("Compiling tiny"), "{log}");
    assert!(log.contains("verdict: identical"), "{log}");
    // The original's view links its newest repro and the verdict.
    let (_, orig) = svc.get(&format!("/api/v1/builds/{at_tag}"));
    assert_eq!(
        orig["reproduced"],
        json!({"id": r, "status": "succeeded", "identical": true})
    );
    // The worktree is gone; of the rebuild only its layout stays (the report points there).
    assert!(!dir.join(format!("svc/data/builds/{r}/src")).exists());
    let rebuilt = std::path::PathBuf::from(verdict["rebuilt_in"].as_str().unwrap());
    assert!(rebuilt.starts_with(dir.join(format!("svc/data/builds/{r}"))));
    assert!(rebuilt.join("out/index.json").is_file());
    assert!(!rebuilt.join("src").exists() && !rebuilt.join("target").exists());
    // The same from the command line: `galley repro --build ID` asks the service and waits.
    let cli = crate::support::galley()
        .args([
            "repro",
            "--json",
            "--build",
            &at_tag.to_string(),
            "--server",
            &svc.url,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(v["identical"], true);
    assert!(err.contains("verdict: identical"), "{err}");
    let refused = crate::support::galley()
        .args([
            "repro",
            "--build",
            &missing.to_string(),
            "--server",
            &svc.url,
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no variant of it succeeded"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // What cannot be reproduced is refused with the reason.
    for (id, code, words) in [
        (r, 409, "is a repro itself"),
        (missing, 409, "no variant of it succeeded"),
        (999_999, 404, "no build"),
    ] {
        let (status, _, body) = svc.post(&format!("/api/v1/builds/{id}/repro"), None, &[]);
        assert_eq!(status, code, "{body}");
        assert!(body.to_string().contains(words), "{body}");
    }
}

#[test]
fn serve_cancel_stops_every_process_and_a_restart_interrupts_what_ran() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("serve-cancel");
    let project = slow_project(&dir);
    // A grandchild that ignores SIGTERM: only SIGKILL stops it, and the record must say so.
    let script = dir.join("stubborn.sh");
    std::fs::write(&script, "trap '' TERM\nwhile true; do sleep 1; done\n").unwrap();
    std::fs::write(
        project.join("build.rs"),
        format!(
            r#"fn main() {{
    let _stubborn = std::process::Command::new("sh").arg("{}").spawn().unwrap();
    let _child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
}}
"#,
            script.display()
        ),
    )
    .unwrap();
    let config = format!(
        "max_running = 1\nmax_queued = 1\ncancel_grace = \"2s\"\nheartbeat = \"1s\"\n[projects.slow]\npath = \"{}\"\nbase = \"{}\"\n",
        project.display(),
        base_arg()
    );
    let token = "cancel-test-token-0123456789";
    let mut svc = Service::start(&dir.join("svc"), &config, Some(token), &[]);

    let running = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let (_, rec) = svc.get(&format!("/api/v1/builds/{running}"));
    let tag = rec["process_tag"].as_str().unwrap().to_string();
    let tree = wait_for_tree(&tag, Duration::from_secs(300));
    // Heartbeats keep an idle stream open while the build script sleeps (heartbeat = 1s).
    let mut stream = svc.stream(running, None);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(stream.wait_comment());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Ok(true),
        "no heartbeat within 5 s"
    );

    let queued = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.1"}));
    let (status, headers, err) = svc.post(
        "/api/v1/builds",
        Some(&json!({"variants": ["sqlite"], "version": "1.0.2"})),
        &[],
    );
    assert_eq!(status, 429, "{err}");
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(err["error"]["code"], "queue_full");

    let (status, _, q) = svc.post(&format!("/api/v1/builds/{queued}/cancel"), None, &[]);
    assert_eq!(
        (status, &q["status"], &q["forced_kill"]),
        (200, &json!("cancelled"), &json!(false)),
        "{q}"
    );

    let sent = Instant::now();
    let (status, _, c) = svc.post(&format!("/api/v1/builds/{running}/cancel"), None, &[]);
    let took = sent.elapsed();
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        (&c["status"], &c["cancelled_by"], &c["forced_kill"]),
        (&json!("cancelled"), &json!("api"), &json!(true)),
        "{c}"
    );
    // The grace period (2 s) plus a second.
    assert!(took < Duration::from_secs(3), "cancel took {took:?}");
    let left = survivors(&tree);
    assert!(left.is_empty(), "still running after cancel: {left:?}");
    assert!(galley::cancel::tagged(&tag).is_empty());
    // Cancelling again gives the same answer; a finished build or an unknown one do not.
    let (status, _, again) = svc.post(&format!("/api/v1/builds/{running}/cancel"), None, &[]);
    assert_eq!(
        (status, &again["status"], &again["forced_kill"]),
        (200, &c["status"], &c["forced_kill"])
    );
    assert_eq!(svc.post("/api/v1/builds/999/cancel", None, &[]).0, 404);
    let events = svc.all_events(running, None);
    let end = events.last().unwrap();
    assert_eq!(
        (&end.data["status"], &end.data["forced_kill"]),
        (&json!("cancelled"), &json!(true))
    );
    assert!(events
        .iter()
        .any(|e| e.kind == "stage" && e.data["status"] == "cancelled"));
    assert!(
        !dir.join(format!("svc/data/builds/{running}")).exists(),
        "a cancelled build's output is removed"
    );

    // SIGKILL the service mid-build: its processes outlive it, a restart stops them and marks
    // the build interrupted; its log and every earlier build stay readable.
    let crashed = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.3"}));
    let (_, rec) = svc.get(&format!("/api/v1/builds/{crashed}"));
    let crash_tag = rec["process_tag"].as_str().unwrap().to_string();
    let crash_tree = wait_for_tree(&crash_tag, Duration::from_secs(300));
    svc.kill9();
    assert!(
        !survivors(&crash_tree).is_empty(),
        "the orphans should still run before the restart"
    );
    svc.restart();
    let rec = svc.wait_final(crashed, Duration::from_secs(10));
    assert_eq!(rec["status"], "interrupted");
    assert!(
        rec["error"].as_str().unwrap().contains("crash or a kill"),
        "{rec}"
    );
    let left = survivors(&crash_tree);
    assert!(left.is_empty(), "orphans of the crashed service: {left:?}");
    let (_, log) = svc.text(&format!("/api/v1/builds/{crashed}/log"));
    assert!(
        log.contains("building slow as it is") && log.contains("build interrupted"),
        "{log}"
    );
    let events = svc.all_events(crashed, None);
    assert_eq!(events.last().unwrap().data["status"], "interrupted");
    assert_eq!(
        svc.get(&format!("/api/v1/builds/{running}")).1["status"],
        "cancelled"
    );
    assert_eq!(
        svc.get(&format!("/api/v1/builds/{queued}")).1["status"],
        "cancelled"
    );

    // SIGTERM: the running build is cancelled within the grace period and the service exits 0.
    let last = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.4"}));
    let (_, rec) = svc.get(&format!("/api/v1/builds/{last}"));
    let last_tree = wait_for_tree(
        rec["process_tag"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    let (status, took) = svc.terminate();
    assert!(status.success(), "{status}: {}", svc.stderr());
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(survivors(&last_tree).is_empty());
    svc.restart();
    let rec = svc.wait_final(last, Duration::from_secs(10));
    assert_eq!(
        (&rec["status"], &rec["cancelled_by"]),
        (&json!("cancelled"), &json!("service shutdown")),
        "{rec}"
    );
}

#[test]
fn serve_refuses_bad_input_with_a_4xx_and_spawns_nothing() {
    let dir = scratch("serve-bad-input");
    let project = tiny_project(&dir);
    let repo = dir.join("repo");
    copy_fixture("tiny", &repo);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    // A branch whose galley.toml gives every variant the same tag: its builds would fail on
    // their tags, so the edge refuses them (main's galley.toml is fine).
    git(&repo, &["checkout", "-q", "-b", "clash"]);
    let toml = std::fs::read_to_string(repo.join("galley.toml")).unwrap();
    std::fs::write(
        repo.join("galley.toml"),
        format!("tags = [\"{{version}}\"]\n{toml}"),
    )
    .unwrap();
    git(&repo, &["commit", "-q", "-am", "one tag for all"]);
    git(&repo, &["checkout", "-q", "main"]);
    let config = format!(
        "[projects.tiny]\npath = \"{project}\"\n[projects.gitty]\ngit = \"{}\"\n",
        repo.display()
    );
    let svc = Service::start(&dir.join("svc"), &config, Some(TOKEN), &[]);
    let ok = json!({"project": "tiny", "variants": ["sqlite"], "version": "1.0.0"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with("variants", json!(["sqlite;id"])), 422, "variants[0]"),
        (
            with("variants", json!(["$(touch /tmp/galley-pwned)"])),
            422,
            "variants[0]",
        ),
        (
            with("variants", json!(["--features=x"])),
            422,
            "variants[0]",
        ),
        (
            with("variants", json!(["sqlite", "nope"])),
            422,
            "variants[1]",
        ),
        (
            with("variants", json!(["sqlite", "sqlite"])),
            422,
            "variants[1]",
        ),
        (with("variants", json!([])), 422, "variants"),
        (with("variants", json!("sqlite")), 422, "variants"),
        (with("version", json!("1.4")), 422, "version"),
        (with("version", json!("1.4.2;rm -rf /")), 422, "version"),
        (with("version", json!("1.4.2+build.5")), 422, "version"),
        (with("version", json!("-1.0.0")), 422, "version"),
        (with("project", json!("nope")), 422, "project"),
        (with("push", json!(true)), 422, "push"),
        (with("ref", json!("main")), 422, "ref"),
        (with("colour", json!("blue")), 422, "colour"),
        (
            json!({"project": "gitty", "variants": ["sqlite"], "version": "1.0.0", "ref": "--upload-pack=touch /tmp/galley-pwned"}),
            422,
            "ref",
        ),
        (
            json!({"project": "gitty", "variants": ["sqlite"], "version": "1.0.0", "ref": "main;id"}),
            422,
            "ref",
        ),
        (
            json!({"project": "gitty", "variants": ["sqlite"], "version": "1.0.0", "ref": "HEAD~1"}),
            422,
            "ref",
        ),
        (
            json!({"variants": ["sqlite"], "version": "1.0.0"}),
            422,
            "project",
        ),
        (
            json!({"project": "gitty", "variants": ["sqlite", "postgres"], "version": "1.0.0", "ref": "clash"}),
            422,
            "version",
        ),
        (
            json!({"project": "tiny", "variants": ["sqlite"]}),
            422,
            "version",
        ),
    ];
    for (body, want, field) in &cases {
        let (status, _, err) = svc.post("/api/v1/builds", Some(body), &[]);
        assert_eq!(status, *want, "{body}: {err}");
        assert_eq!(err["error"]["field"], *field, "{body}: {err}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
        assert!(err["error"]["hint"].is_string(), "{err}");
    }
    // Not JSON, not an object, the wrong media type.
    let raw = |body: &str, ct: &str| {
        reqwest::blocking::Client::new()
            .post(format!("{}/api/v1/builds", svc.url))
            .bearer_auth(TOKEN)
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .unwrap()
    };
    assert_eq!(
        raw("{\"version\":", "application/json").status().as_u16(),
        400
    );
    assert_eq!(raw("[1,2]", "application/json").status().as_u16(), 422);
    assert_eq!(
        raw("version=1", "application/x-www-form-urlencoded")
            .status()
            .as_u16(),
        415
    );
    // 10 MB: refused before it is read (curl waits for the answer to Expect: 100-continue).
    let big = dir.join("big.json");
    std::fs::write(
        &big,
        format!(
            "{{\"version\":\"1.0.0\",\"x\":\"{}\"}}",
            "a".repeat(10 << 20)
        ),
    )
    .unwrap();
    let out = run_ok(
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "content-type: application/json",
            ])
            .arg("-H")
            .arg(format!("authorization: Bearer {TOKEN}"))
            .arg("--data-binary")
            .arg(format!("@{}", big.display()))
            .arg(format!("{}/api/v1/builds", svc.url)),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    // Tokens: missing, wrong, in the wrong scheme; /healthz needs none.
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some(&format!("Basic {TOKEN}")[..]),
    ] {
        let mut rb = reqwest::blocking::Client::new().get(format!("{}/api/v1/builds", svc.url));
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"galley\"");
    }
    assert_eq!(
        reqwest::blocking::get(format!("{}/healthz", svc.url))
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(svc.get("/api/v1/builds/12345").0, 404);
    assert_eq!(svc.get("/api/v1/builds?status=exploded").0, 422);
    assert_eq!(svc.get("/api/v1/builds?limit=0").0, 422);
    // What the framework refuses (a path or query that does not parse, a method a route does
    // not take) comes in the same JSON envelope as galley's own refusals.
    for (path, status, code) in [
        ("/api/v1/builds/abc", 400, "invalid_request"),
        (
            "/api/v1/builds/99999999999999999999",
            400,
            "invalid_request",
        ),
        ("/api/v1/builds?limit=lots", 400, "invalid_request"),
        ("/api/v1/builds/1/events?after=x", 400, "invalid_request"),
    ] {
        let (got, body) = svc.get(path);
        assert_eq!(
            (got, &body["error"]["code"]),
            (status, &json!(code)),
            "{path}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    let (status, _, body) = svc.post("/api/v1/projects", None, &[]);
    assert_eq!(
        (status, &body["error"]["code"]),
        (405, &json!("method_not_allowed")),
        "{body}"
    );

    // Nothing was queued, nothing ran, no payload did anything.
    let (_, page) = svc.get("/api/v1/builds");
    assert_eq!(page["builds"], json!([]));
    assert!(!Path::new("/tmp/galley-pwned").exists());
    assert!(!svc.stderr().contains(TOKEN));

    // Idempotency-Key: the same key and body give the same build, another body a 422.
    let key = [("idempotency-key", "release-1.0.0")];
    let (s1, _, a) = svc.post("/api/v1/builds", Some(&ok), &key);
    let (s2, h2, b) = svc.post("/api/v1/builds", Some(&ok), &key);
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(a["id"], b["id"]);
    assert_eq!(h2["idempotent-replayed"], "true");
    let (s3, _, c) = svc.post(
        "/api/v1/builds",
        Some(&with("version", json!("1.0.1"))),
        &key,
    );
    assert_eq!(
        (s3, &c["error"]["code"]),
        (422, &json!("idempotency_conflict"))
    );
    let id = a["id"].as_i64().unwrap();
    let (status, _, _) = svc.post(&format!("/api/v1/builds/{id}/cancel"), None, &[]);
    assert!(status == 200 || status == 409, "{status}");
}

#[test]
fn serve_openapi_document_lists_every_route_and_validates() {
    let dir = scratch("serve-openapi");
    let project = tiny_project(&dir);
    let svc = Service::start_with_args(
        &dir.join("svc"),
        &format!("[projects.tiny]\npath = \"{project}\"\n"),
        None,
        &[],
        &["--log-format", "json"],
    );
    let (status, doc) = svc.get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let want = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/api/v1/projects"),
        ("post", "/api/v1/builds"),
        ("get", "/api/v1/builds"),
        ("get", "/api/v1/builds/{id}"),
        ("delete", "/api/v1/builds/{id}"),
        ("get", "/api/v1/builds/{id}/events"),
        ("get", "/api/v1/builds/{id}/log"),
        ("post", "/api/v1/builds/{id}/cancel"),
        ("post", "/api/v1/builds/{id}/rebuild"),
        ("post", "/api/v1/builds/{id}/repro"),
        ("post", "/api/v1/builds/{id}/rebase"),
        ("get", "/api/v1/versions/next"),
        ("get", "/api/v1/registry"),
        ("get", "/api/v1/registry/check"),
        ("get", "/api/v1/registry/base"),
        ("get", "/api/v1/workers"),
    ];
    let mut listed = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.push((method.clone(), path.clone()));
        }
    }
    listed.sort();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    // Every documented route answers (not the fallback's 404 for an unknown endpoint).
    for (method, path) in &want {
        let url = format!("{}{}", svc.url, path.replace("{id}", "1"));
        let r = reqwest::blocking::Client::new()
            .request(method.to_uppercase().parse().unwrap(), url)
            .send()
            .unwrap();
        let body = r.text().unwrap();
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path} is not routed"
        );
    }
    // The served document is completed from the configuration: the build request names what
    // the project offers, every protected operation says it answers 401, and the links from a
    // queued build name operations that exist.
    let create = &doc["components"]["schemas"]["CreateBuild"]["properties"];
    assert_eq!(
        create["variants"]["items"]["enum"],
        json!(["mysql", "postgres", "sqlite"])
    );
    assert_eq!(create["project"]["enum"], json!(["tiny", null]));
    assert_eq!(create["push"]["enum"], json!([false, null]));
    assert!(create.get("ref").is_none(), "no git project: no ref");
    let mut ids = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ids.push(op["operationId"].as_str().unwrap().to_string());
            let public = path == "/healthz" || path == "/readyz";
            assert_eq!(
                op["responses"].get("401").is_some(),
                !public,
                "{method} {path}"
            );
        }
    }
    let links = doc
        .pointer("/paths/~1api~1v1~1builds/post/responses/202/links")
        .and_then(Value::as_object)
        .expect("links from a queued build");
    assert!(links.len() >= 5, "{links:?}");
    for link in links.values() {
        let op = link["operationId"].as_str().unwrap();
        assert!(ids.iter().any(|i| i == op), "link to {op}, not in {ids:?}");
    }
    // --log-format json: the service's log is one JSON object per line.
    let log = svc.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{log}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(log.contains("galley serve listening"));
    // An independent validator reads it as OpenAPI 3.1.
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    run_ok(
        std::process::Command::new("python3")
            .args(["-c", "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1])))"])
            .arg(&file),
    );
}

/// A database written by the galley before the typed seams (ba2efb4: a succeeded build, a
/// cached one, a failed one and a cancelled one) is served as that galley served it: every
/// build view and every plain-text log the same, and every event replayed.
#[test]
fn serve_reads_a_database_written_by_the_previous_version() {
    let fixture = crate::support::repo().join("fixtures/store/before-seams");
    let dir = scratch("serve-old-db");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::copy(fixture.join("galley.db"), dir.join("data/galley.db")).unwrap();
    let project = tiny_project(&dir);
    // Retention would take builds this old; the test keeps them.
    let svc = Service::start(
        &dir,
        &format!("[retention]\nmax_age = \"100000d\"\n[projects.tiny]\npath = \"{project}\"\n"),
        None,
        &[],
    );
    for id in 1..=4 {
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture.join(format!("build-{id}.json"))).unwrap(),
        )
        .unwrap();
        let (status, got) = svc.get(&format!("/api/v1/builds/{id}"));
        assert_eq!(status, 200, "{got}");
        assert_eq!(got, want, "build {id}");
        let want = std::fs::read_to_string(fixture.join(format!("log-{id}.txt"))).unwrap();
        let (status, got) = svc.text(&format!("/api/v1/builds/{id}/log"));
        assert_eq!(status, 200);
        assert_eq!(got, want, "log of build {id}");
        let events = svc.all_events(id, None);
        assert_eq!(events.last().map(|e| e.kind.as_str()), Some("end"));
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
    let (_, list) = svc.get("/api/v1/builds");
    let statuses: Vec<&str> = list["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["cancelled", "failed", "succeeded", "succeeded"]);
}

#[test]
fn versions_next_bumps_each_way_and_reads_conventional_commits_since_the_last_tag() {
    let dir = scratch("serve-versions-next");
    let project = dir.join("svc-src");
    copy_fixture("tiny", &project);
    let cargo = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        cargo.replacen("version = \"0.1.0\"", "version = \"0.3.1\"", 1),
    )
    .unwrap();
    git(&project, &["init", "-q", "-b", "main"]);
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-q", "-m", "chore: start"]);
    let config = format!("[projects.tiny]\npath = \"{}\"\n", project.display());
    let svc = Service::start(&dir.join("svc"), &config, None, &[]);
    let next = |q: &str| svc.get(&format!("/api/v1/versions/next?project=tiny{q}")).1;

    // Nothing published: each bump gives its bump of the crate's version, which is offered as
    // it is for a first release.
    let fresh = next("");
    assert_eq!(
        (
            &fresh["current"],
            &fresh["patch"],
            &fresh["minor"],
            &fresh["major"],
            &fresh["next"],
            &fresh["from"]
        ),
        (
            &json!("0.3.1"),
            &json!("0.3.2"),
            &json!("0.4.0"),
            &json!("1.0.0"),
            &json!("0.3.1"),
            &json!("Cargo.toml")
        ),
        "{fresh}"
    );
    assert_eq!(next("&bump=minor")["next"], "0.4.0");

    // v0.3.1 is tagged (published); then a fix and a feature: minor, with the commit named.
    git(&project, &["tag", "v0.3.1"]);
    std::fs::write(project.join("NOTES"), "one").unwrap();
    git(&project, &["add", "-A"]);
    git(
        &project,
        &["commit", "-q", "-m", "fix: the health check answers 200"],
    );
    std::fs::write(project.join("NOTES"), "two").unwrap();
    git(
        &project,
        &["commit", "-q", "-am", "feat(api): a /version route"],
    );
    let after = next("");
    assert_eq!(
        (
            &after["from"],
            &after["current"],
            &after["suggested"],
            &after["next"]
        ),
        (
            &json!("git tags"),
            &json!("0.3.1"),
            &json!("minor"),
            &json!("0.4.0")
        ),
        "{after}"
    );
    let decided = after["decided_by"].as_array().unwrap();
    assert_eq!(decided.len(), 1, "{after}");
    assert_eq!(decided[0]["subject"], "feat(api): a /version route");
    assert_eq!(decided[0]["commit"].as_str().unwrap().len(), 40);
    // A breaking change outranks both; an explicit bump wins over the suggestion.
    git(
        &project,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "refactor!: rename the binary",
        ],
    );
    assert_eq!(next("")["next"], "1.0.0");
    assert_eq!(next("&bump=patch")["next"], "0.3.2");
}

#[test]
fn serve_drains_on_sigterm_when_asked_running_builds_finish_new_ones_are_refused() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("serve-drain");
    let project = dir.join("pause");
    copy_fixture("tiny", &project);
    std::fs::write(
        project.join("build.rs"),
        "fn main() {\n    let _child = std::process::Command::new(\"sleep\").arg(\"4\").spawn().unwrap();\n    std::thread::sleep(std::time::Duration::from_secs(5));\n}\n",
    )
    .unwrap();
    let config = format!(
        "drain = \"120s\"\n[projects.pause]\npath = \"{}\"\nbase = \"{}\"\n",
        project.display(),
        base_arg()
    );
    let mut svc = Service::start(&dir.join("svc"), &config, None, &[]);
    let id = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let (_, rec) = svc.get(&format!("/api/v1/builds/{id}"));
    wait_for_tree(
        rec["process_tag"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    let pid = rustix::process::Pid::from_raw(svc.pid() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    // Draining: not ready, no new build, the running one goes on.
    let t = Instant::now();
    let ready = loop {
        let (status, body) = svc.get("/readyz");
        if status == 503 || t.elapsed() > Duration::from_secs(10) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    let (status, _, refused) = svc.post(
        "/api/v1/builds",
        Some(&json!({"variants": ["sqlite"], "version": "1.0.1"})),
        &[],
    );
    assert_eq!(status, 503, "{refused}");
    let exit = svc.wait_exit();
    assert!(exit.success(), "{exit}: {}", svc.stderr());
    svc.restart();
    let rec = svc.wait_final(id, Duration::from_secs(10));
    assert_eq!(rec["status"], "succeeded", "the drain let it finish: {rec}");
}
