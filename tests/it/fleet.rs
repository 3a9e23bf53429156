//! The fleet: two real `galley serve` workers on one real PostgreSQL (`pg_cluster`), real builds
//! of the tiny fixture. Builds are spread over both and built once each, every record and event
//! reads the same from either instance, an event stream moves from one instance to the other
//! without a gap or a repeat, a cancel on one stops a build on the other, a worker killed
//! mid-compile is found out within its lease, and a PostgreSQL restart mid-build loses nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cancel::{slow_project, survivors, wait_for_tree};
use crate::pg_cluster::{cluster, PASSWORD};
use crate::service::{Service, Sse};
use crate::support::{base_arg, copy_fixture, heavy, require, scratch};

const LEASE_S: u64 = 3;

/// The config both workers share but for their name.
fn config(name: &str, dir: &Path) -> String {
    format!(
        "worker_name = \"{name}\"\nlease = \"{LEASE_S}s\"\nsticky_delay = \"1s\"\nretry_interrupted = true\nmax_running = 1\nmax_queued = 20\ncancel_grace = \"2s\"\nheartbeat = \"1s\"\n\
         [projects.tiny]\npath = \"{}\"\nbase = \"{base}\"\n\
         [projects.slow]\npath = \"{}\"\nbase = \"{base}\"\n\
         [projects.pause]\npath = \"{}\"\nbase = \"{base}\"\n",
        dir.join("tiny").display(),
        dir.join("slow").display(),
        dir.join("pause").display(),
        base = base_arg()
    )
}

/// The tiny fixture with a build script that sleeps a few seconds: a build that is surely
/// running when the test restarts PostgreSQL, and then ends on its own.
fn pausing_project(dir: &Path) {
    let project = dir.join("pause");
    copy_fixture("tiny", &project);
    std::fs::write(
        project.join("build.rs"),
        "fn main() {\n    let _child = std::process::Command::new(\"sleep\").arg(\"6\").spawn().unwrap();\n    std::thread::sleep(std::time::Duration::from_secs(8));\n}\n",
    )
    .unwrap();
}

/// Waits until the build runs; returns the name of the worker that claimed it.
fn worker_of(svc: &Service, id: i64, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        let (_, rec) = svc.get(&format!("/api/v1/builds/{id}"));
        if let Some(w) = rec["worker"].as_str() {
            return w.to_string();
        }
        assert!(t.elapsed() < limit, "build {id} was never claimed: {rec}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The stream's ids are 1, 2, 3... with no gap and no repeat, and it ends with `end`.
fn assert_complete(events: &[Sse]) {
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let want: Vec<i64> = (1..=ids.len() as i64).collect();
    assert_eq!(ids, want, "a gap or a repeat");
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("end"));
}

fn running_events(events: &[Sse]) -> usize {
    events
        .iter()
        .filter(|e| e.kind == "status" && e.data["status"] == "running")
        .count()
}

#[test]
fn two_workers_on_postgres_share_builds_streams_cancels_and_survive_a_death_and_a_restart() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let pg = cluster();
    let url = pg.database("fleet");
    let dir = scratch("fleet");
    copy_fixture("tiny", &dir.join("tiny"));
    slow_project(&dir);
    pausing_project(&dir);
    let env = [("GALLEY_STORE", url.as_str())];
    let mut a = Service::start(&dir.join("a"), &config("a", &dir), None, &env);
    let mut b = Service::start(&dir.join("b"), &config("b", &dir), None, &env);
    let by_name = |name: &str| -> usize { usize::from(name != "a") };

    // Six submissions, alternately to each instance: both workers build, each build once.
    let ids: Vec<i64> = (0..6)
        .map(|n| {
            let svc = if n % 2 == 0 { &a } else { &b };
            svc.submit(
                json!({"project": "tiny", "variants": ["sqlite"], "version": format!("1.0.{n}")}),
            )
        })
        .collect();
    let mut workers = BTreeSet::new();
    for id in &ids {
        let rec = a.wait_final(*id, Duration::from_secs(900));
        assert_eq!(rec["status"], "succeeded", "{rec}");
        workers.insert(rec["worker"].as_str().unwrap().to_string());
        let (_, same) = b.get(&format!("/api/v1/builds/{id}"));
        assert_eq!(same, rec, "both instances answer the same record");
        let events = a.all_events(*id, None);
        assert_complete(&events);
        assert_eq!(running_events(&events), 1, "claimed once: {events:?}");
        assert_eq!(b.all_events(*id, None), events);
    }
    assert_eq!(
        workers,
        BTreeSet::from(["a".to_string(), "b".to_string()]),
        "both workers took builds"
    );

    // A build followed on the instance that does not run it, then from the one that does.
    let slow = a.submit(json!({"project": "slow", "variants": ["sqlite"], "version": "2.0.0"}));
    let builder = worker_of(&a, slow, Duration::from_secs(60));
    let svcs = [&a, &b];
    let (on, off) = (svcs[by_name(&builder)], svcs[1 - by_name(&builder)]);
    let (_, rec) = off.get(&format!("/api/v1/builds/{slow}"));
    let tree = wait_for_tree(
        rec["process_tag"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    let mut first = off.stream(slow, None);
    let mut seen = Vec::new();
    // Up to the compile's start: source, status and stage events came from the other worker.
    while let Some(e) = first.next_event() {
        let compiling = e.kind == "stage" && e.data["stage"] == "compile";
        seen.push(e);
        if compiling {
            break;
        }
    }
    drop(first);
    let last = seen.last().unwrap().id;
    let mut second = on.stream(slow, Some(last));
    // A cancel asked on the instance that does not run it: the builder stops it.
    let sent = Instant::now();
    let (status, _, c) = off.post(&format!("/api/v1/builds/{slow}/cancel"), None, &[]);
    let took = sent.elapsed();
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        (&c["status"], &c["cancelled_by"]),
        (&json!("cancelled"), &json!("anonymous"))
    );
    // The grace period (2 s) plus a second.
    assert!(took < Duration::from_secs(3), "the cancel took {took:?}");
    let left = survivors(&tree);
    assert!(left.is_empty(), "still running after the cancel: {left:?}");
    while let Some(e) = second.next_event() {
        let end = e.kind == "end";
        seen.push(e);
        if end {
            break;
        }
    }
    assert_complete(&seen);
    assert_eq!(seen, on.all_events(slow, None), "the same events, in order");

    // SIGKILL of the builder mid-compile: the other worker marks the build interrupted within
    // the lease plus a second; the builder, started again, stops what its build left.
    let doomed = a.submit(json!({"project": "slow", "variants": ["sqlite"], "version": "2.0.1"}));
    let builder = worker_of(&a, doomed, Duration::from_secs(60));
    let (_, rec) = a.get(&format!("/api/v1/builds/{doomed}"));
    let tree = wait_for_tree(
        rec["process_tag"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    let (killed, other) = if builder == "a" {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    killed.kill9();
    let t = Instant::now();
    let rec = other.wait_final(doomed, Duration::from_secs(30));
    let noticed = t.elapsed();
    assert_eq!(rec["status"], "interrupted", "{rec}");
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("worker {builder} was last seen at")),
        "{error}"
    );
    assert!(
        noticed <= Duration::from_millis(LEASE_S * 1000 + 1500),
        "noticed after {noticed:?}"
    );
    eprintln!("fleet: a dead worker's build was marked interrupted {noticed:?} after the kill");
    assert!(
        !survivors(&tree).is_empty(),
        "the dead worker's build processes outlive it until it starts again"
    );
    // retry_interrupted: the build is queued again, once, as a new build the living worker runs.
    let (_, list) = other.get("/api/v1/builds?limit=1");
    let retry = &list["builds"][0];
    assert_eq!(retry["inputs"]["retry_of"], doomed, "{retry}");
    let retry_id = retry["id"].as_i64().unwrap();
    let (status, _, c) = other.post(&format!("/api/v1/builds/{retry_id}/cancel"), None, &[]);
    assert_eq!((status, &c["status"]), (200, &json!("cancelled")), "{c}");
    killed.restart();
    let t = Instant::now();
    while !survivors(&tree).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{:?}",
            survivors(&tree)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_complete(&other.all_events(doomed, None));

    // PostgreSQL restarted mid-build: the build ends on its own, every event once.
    let paused = a.submit(json!({"project": "pause", "variants": ["sqlite"], "version": "3.0.0"}));
    worker_of(&a, paused, Duration::from_secs(60));
    let (_, rec) = a.get(&format!("/api/v1/builds/{paused}"));
    wait_for_tree(
        rec["process_tag"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    pg.restart();
    let rec = a.wait_final(paused, Duration::from_secs(300));
    eprintln!(
        "fleet: the build across a PostgreSQL restart ended {} ({})",
        rec["status"], rec["error"]
    );
    assert!(
        rec["status"] == "succeeded"
            || rec["error"]
                .as_str()
                .is_some_and(|e| e.contains("the build database")),
        "neither done nor failed with a reason: {rec}"
    );
    let events = b.all_events(paused, None);
    assert_complete(&events);
    assert_eq!(running_events(&events), 1);
    let stages: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == "stage")
        .map(|e| &e.data)
        .collect();
    let unique: BTreeSet<String> = stages
        .iter()
        .map(|s| format!("{}/{}/{}", s["variant"], s["stage"], s["status"]))
        .collect();
    assert_eq!(
        unique.len(),
        stages.len(),
        "a stage event twice: {stages:?}"
    );
    // Both workers reconnected: each claims and builds again.
    for svc in [&a, &b] {
        let id = svc.submit(json!({"project": "tiny", "variants": ["sqlite"], "version": "4.0.0"}));
        assert_eq!(
            svc.wait_final(id, Duration::from_secs(300))["status"],
            "succeeded"
        );
    }

    // The workers, from either instance; the store's password nowhere.
    let (status, list) = b.get("/api/v1/workers");
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"], "{list}");
    for w in list.as_array().unwrap() {
        assert_eq!(w["alive"], true, "{w}");
        assert_eq!(w["this"], w["name"] == "b", "{w}");
        assert!(
            w["warm_projects"]
                .as_array()
                .unwrap()
                .contains(&json!("tiny")),
            "{w}"
        );
    }
    for text in [a.stderr(), b.stderr(), list.to_string()] {
        assert!(!text.contains(PASSWORD));
    }
}
