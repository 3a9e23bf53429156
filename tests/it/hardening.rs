//! `galley serve` against hostile clients, full disks, a second instance and runaway builds: one
//! regression test per defect the security and reliability probe found (issue 19), each on a
//! real `galley serve` process over real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cancel::{slow_project, wait_for_tree};
use crate::service::{git, Service};
use crate::support::{base_arg, copy_fixture, galley, heavy, require, scratch};

const TOKEN: &str = "hardening-token-0123456789";

fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny");
    copy_fixture("tiny", &p);
    p
}

fn addr(svc: &Service) -> String {
    svc.url.trim_start_matches("http://").to_string()
}

/// Sends `bytes` on a fresh connection and reads the answer until the server closes it (or
/// `limit` passes); returns the text and how long the server took to close.
fn raw(svc: &Service, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr(svc)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(bytes).unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).to_string(), t.elapsed())
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A request with every header given, nothing else.
fn request(svc: &Service, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    request_body(svc, method, path, headers, "")
}

fn request_body(
    svc: &Service,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let mut rb = client.request(method.parse().unwrap(), format!("{}{path}", svc.url));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if !body.is_empty() {
        rb = rb.body(body.to_string());
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
    )
}

#[test]
fn hardening_half_sent_requests_time_out_and_cannot_lock_anyone_out() {
    let dir = scratch("hardening-slowloris");
    let project = tiny(&dir);
    let config = format!(
        "heartbeat = \"1s\"\n[http]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections = 20\nmax_streams = 4\n[projects.tiny]\npath = \"{}\"\n",
        project.display()
    );
    let svc = Service::start(&dir.join("svc"), &config, None, &[]);
    // 30 half-sent requests: 20 fill the limit, 10 more are answered 503 at once.
    let half = b"GET /api/v1/builds HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    let opened: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&svc)).unwrap();
            s.write_all(half).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    let mut refused = 0;
    let mut closed_in = Vec::new();
    let handles: Vec<_> = opened
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                String::from_utf8_lossy(&out).to_string()
            })
        })
        .collect();
    for h in handles {
        let answer = h.join().unwrap();
        closed_in.push(t.elapsed());
        if status_of(&answer) == 503 {
            assert!(answer.contains("too_many_connections"), "{answer}");
            refused += 1;
        }
    }
    assert_eq!(refused, 10, "the connections over max_connections get 503");
    // Every half-sent request is closed by the server: header_timeout (1 s) plus slack, far
    // below the 10 s this client would wait.
    let slowest = closed_in.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(5), "held for {slowest:?}");
    // Then everyone else is served again.
    assert_eq!(svc.get("/api/v1/builds").0, 200);

    // A body that never comes: the idle timeout (2 s) closes the connection.
    let (answer, took) = raw(
        &svc,
        b"POST /api/v1/builds HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ver",
        Duration::from_secs(20),
    );
    assert!(took < Duration::from_secs(8), "{took:?}: {answer}");
    // A kept-alive connection that sends nothing more is closed too (hyper's header timeout
    // runs while it waits for the next request).
    let (answer, took) = raw(
        &svc,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        Duration::from_secs(20),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(8), "kept alive for {took:?}");
}

#[test]
fn hardening_event_streams_are_capped_per_token_and_in_all() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("hardening-streams");
    let project = slow_project(&dir);
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("alice {TOKEN}-a\nbob {TOKEN}-b\n")).unwrap();
    let config = format!(
        "heartbeat = \"1s\"\ncancel_grace = \"1s\"\ntoken_file = \"{}\"\n[http]\nmax_streams = 4\nmax_streams_per_token = 3\n[projects.slow]\npath = \"{}\"\nbase = \"{}\"\n",
        tokens.display(),
        project.display(),
        base_arg()
    );
    let mut alice = Service::start(&dir.join("svc"), &config, Some(&format!("{TOKEN}-a")), &[]);
    let id = alice.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let open = |token: &str| {
        reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .unwrap()
            .get(format!("{}/api/v1/builds/{id}/events", alice.url))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    let a: Vec<_> = (0..3).map(|_| open(&format!("{TOKEN}-a"))).collect();
    assert!(a.iter().all(|r| r.status() == 200));
    let fourth = open(&format!("{TOKEN}-a"));
    assert_eq!(fourth.status(), 429);
    assert!(fourth.text().unwrap().contains("too_many_streams"));
    let b = open(&format!("{TOKEN}-b"));
    assert_eq!(b.status(), 200, "another token has its own share");
    let full = open(&format!("{TOKEN}-b"));
    assert_eq!(full.status(), 503);
    assert!(full.text().unwrap().contains("streams_full"));
    // A client that goes away frees its place (noticed at the next heartbeat).
    drop(a);
    let t = Instant::now();
    loop {
        let r = open(&format!("{TOKEN}-a"));
        if r.status() == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "places never freed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, _, _) = alice.post(&format!("/api/v1/builds/{id}/cancel"), None, &[]);
    assert_eq!(status, 200);
    alice.token = None;
    assert_eq!(alice.get("/api/v1/builds").0, 401);
}

#[test]
fn hardening_cross_site_posts_and_rebinding_hosts_are_refused() {
    let dir = scratch("hardening-csrf");
    let project = tiny(&dir);
    // No token: the mode a web page could drive.
    let svc = Service::start(
        &dir.join("svc"),
        &format!(
            "[http]\nallowed_hosts = [\"galley.example\"]\n[projects.tiny]\npath = \"{}\"\n",
            project.display()
        ),
        None,
        &[],
    );
    let host = addr(&svc);
    let own_origin = format!("http://{host}");
    let cancel = "/api/v1/builds/999/cancel";
    // A cross-site form: no body, or a form body, no JSON media type.
    assert_eq!(request(&svc, "POST", cancel, &[]).0, 415);
    let (s, e) = request(
        &svc,
        "POST",
        cancel,
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(
        (s, &e["error"]["code"]),
        (415, &json!("unsupported_media_type"))
    );
    // The body of an action is `{}` or nothing; anything else is refused before it acts.
    let json_ct = ("content-type", "application/json");
    let (s, e) = request_body(&svc, "POST", cancel, &[json_ct], "{\"force\": true}");
    assert_eq!((s, &e["error"]["code"]), (422, &json!("unknown_field")));
    assert_eq!(request_body(&svc, "POST", cancel, &[json_ct], "{}").0, 404);
    // The media type is the action's, after routing: a POST to a GET route is 405.
    assert_eq!(request(&svc, "POST", "/healthz", &[]).0, 405);
    // From another origin, even with JSON.
    for (k, v) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let (s, e) = request(&svc, "POST", cancel, &[json_ct, (k, v)]);
        assert_eq!(
            (s, &e["error"]["code"]),
            (403, &json!("cross_origin")),
            "{k}: {v}"
        );
    }
    let (s, _) = request(
        &svc,
        "DELETE",
        "/api/v1/builds/999",
        &[("origin", "http://evil.example")],
    );
    assert_eq!(s, 403);
    // DNS rebinding: the page's own name in Host, for reads and writes alike, the kitchen too.
    for (method, path) in [("GET", "/api/v1/builds"), ("GET", "/"), ("POST", cancel)] {
        let (s, e) = request(&svc, method, path, &[json_ct, ("host", "evil.example")]);
        assert_eq!(
            (s, &e["error"]["code"]),
            (421, &json!("unknown_host")),
            "{method} {path}"
        );
    }
    // What is allowed: the listen address, loopback names, configured names, the own origin.
    let port = host.rsplit_once(':').unwrap().1;
    for h in [
        host.clone(),
        format!("localhost:{port}"),
        "galley.example".into(),
    ] {
        assert_eq!(
            request(&svc, "GET", "/api/v1/builds", &[("host", &h)]).0,
            200,
            "{h}"
        );
    }
    for extra in [
        ("origin", own_origin.as_str()),
        ("sec-fetch-site", "same-origin"),
    ] {
        let (s, e) = request(&svc, "POST", cancel, &[json_ct, extra]);
        assert_eq!(s, 404, "{extra:?} passes the guard: {e}");
    }
}

#[test]
fn hardening_bearer_scheme_is_case_insensitive() {
    let dir = scratch("hardening-bearer");
    let project = tiny(&dir);
    let svc = Service::start(
        &dir.join("svc"),
        &format!("[projects.tiny]\npath = \"{}\"\n", project.display()),
        Some(TOKEN),
        &[],
    );
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let v = format!("{scheme} {TOKEN}");
        assert_eq!(
            request(&svc, "GET", "/api/v1/builds", &[("authorization", &v)]).0,
            200,
            "{scheme}"
        );
    }
    for bad in [
        format!("Basic {TOKEN}"),
        format!("Bearer {TOKEN}x"),
        "Bearer".into(),
        TOKEN.into(),
    ] {
        assert_eq!(
            request(&svc, "GET", "/api/v1/builds", &[("authorization", &bad)]).0,
            401,
            "{bad}"
        );
    }
    // The probe's "fine" list stays fine: every route refuses a missing or wrong token.
    let (_, doc) = svc.get("/api/v1/openapi.json");
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path == "/healthz" || path == "/readyz" {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let p = path.replace("{id}", "1");
            let m = method.to_uppercase();
            let ct = ("content-type", "application/json");
            assert_eq!(
                request(&svc, &m, &p, &[ct]).0,
                401,
                "{m} {p} without a token"
            );
            let wrong = ("authorization", "Bearer not-the-token");
            assert_eq!(
                request(&svc, &m, &p, &[ct, wrong]).0,
                401,
                "{m} {p} wrong token"
            );
        }
    }
}

#[test]
fn hardening_a_second_serve_on_the_same_data_dir_refuses_and_names_the_first() {
    let dir = scratch("hardening-second");
    let project = tiny(&dir);
    let svc = Service::start(
        &dir.join("svc"),
        &format!("[projects.tiny]\npath = \"{}\"\n", project.display()),
        None,
        &[],
    );
    let first = svc.pid();
    let mut second = galley()
        .arg("serve")
        .arg("--config")
        .arg(dir.join("svc/serve.toml"))
        .env_remove("GALLEY_API_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while second.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = second.try_wait().unwrap().is_none();
    if started {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !started,
        "a second service started on the same data dir: {stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("another galley serve (pid {first})")),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it never listened"
    );
    // The first one goes on as before.
    assert_eq!(svc.get("/readyz").0, 200);
    assert_eq!(svc.get("/api/v1/builds").0, 200);
}

#[test]
fn hardening_concurrent_first_requests_to_a_git_project_clone_once() {
    let dir = scratch("hardening-git-race");
    let repo = dir.join("repo");
    copy_fixture("tiny", &repo);
    // Some history to fetch, so a clone takes long enough for the requests to meet.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..64 {
        let bytes: Vec<u8> = (0..64 << 10)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        std::fs::write(repo.join(format!("blob-{n}.bin")), bytes).unwrap();
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    // file:// makes git speak its protocol (a plain path would hard-link, far too fast).
    let svc = Service::start(
        &dir.join("svc"),
        &format!("[projects.tiny]\ngit = \"file://{}\"\n", repo.display()),
        None,
        &[],
    );
    // Eight first requests released together, each needing the mirror (the project list reads
    // galley.toml from it).
    let url = format!("{}/api/v1/projects", svc.url);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let answers: Vec<(u16, Value)> = (0..8)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                barrier.wait();
                let r = client.get(url).send().unwrap();
                let s = r.status().as_u16();
                (
                    s,
                    serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for (s, v) in &answers {
        assert_eq!(*s, 200, "{v}");
        let p = &v[0];
        assert!(p["error"].is_null(), "{p}");
        assert!(!p["variants"].as_array().unwrap().is_empty(), "{p}");
    }
    let mirrors: Vec<String> = std::fs::read_dir(dir.join("svc/data/git"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(mirrors, ["tiny.git"], "one mirror, no partial clone left");
}

#[test]
fn hardening_versions_next_answers_when_the_registry_never_does() {
    let dir = scratch("hardening-silent-registry");
    let project = tiny(&dir);
    // A registry that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let svc = Service::start(
        &dir.join("svc"),
        &format!(
            "[projects.tiny]\npath = \"{}\"\npush = \"127.0.0.1:{port}/team/tiny\"\n",
            project.display()
        ),
        None,
        &[],
    );
    let t = Instant::now();
    let (status, v) = svc.get("/api/v1/versions/next?project=tiny");
    let took = t.elapsed();
    assert_eq!(status, 200, "{v}");
    assert!(
        v["warning"]
            .as_str()
            .unwrap_or("")
            .contains("cannot list the tags"),
        "{v}"
    );
    assert_ne!(v["source"], "registry", "{v}");
    // An answer, not an hour: the HTTPS probe, two tries of 10 s and a backoff.
    assert!(took < Duration::from_secs(60), "{took:?}");
}

/// A project whose build script prints `lines` one-byte lines and one line of `huge` bytes
/// without a newline, then fails: cargo shows all of it, galley logs it.
fn noisy_project(dir: &Path, lines: usize, huge: usize) -> PathBuf {
    let project = dir.join("noisy");
    copy_fixture("tiny", &project);
    std::fs::write(
        project.join("build.rs"),
        format!(
            r#"use std::io::Write;
fn main() {{
    let mut out = std::io::stdout().lock();
    for _ in 0..{lines} {{
        out.write_all(b"x\n").unwrap();
    }}
    let chunk = vec![b'y'; 1 << 20];
    let mut left = {huge}usize;
    while left > 0 {{
        let n = left.min(chunk.len());
        out.write_all(&chunk[..n]).unwrap();
        left -= n;
    }}
    out.flush().unwrap();
    std::process::exit(1);
}}
"#
        ),
    )
    .unwrap();
    project
}

/// VmHWM of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn hardening_log_cap_counts_what_is_stored_and_a_huge_line_is_read_in_pieces() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("hardening-log-cap");
    let project = noisy_project(&dir, 300_000, 50 << 20);
    let cap = 64 << 10;
    let svc = Service::start(
        &dir.join("svc"),
        &format!(
            "log_cap_bytes = {cap}\n[projects.noisy]\npath = \"{}\"\nbase = \"{}\"\n",
            project.display(),
            base_arg()
        ),
        None,
        &[],
    );
    let before = peak_rss_kib(svc.pid());
    let id = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let rec = svc.wait_final(id, Duration::from_secs(600));
    assert_eq!(rec["status"], "failed", "{rec}");
    // What is stored for the log, event by event, stays within the cap.
    let db = rusqlite::Connection::open(dir.join("svc/data/galley.db")).unwrap();
    let (stored, events): (i64, i64) = db
        .query_row(
            "SELECT SUM(length(kind) + length(data) + 16), COUNT(*) FROM events WHERE build_id = ?1 AND kind = 'log'",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        stored <= cap,
        "{stored} bytes in {events} log events for a cap of {cap}"
    );
    assert!(
        rec["log_dropped"]["lines"].as_i64().unwrap() > 300_000,
        "{rec}"
    );
    // The 50 MB line was read and stored in pieces: the service never held it whole.
    let grew_mib = (peak_rss_kib(svc.pid()) - before) / 1024;
    eprintln!("peak memory grew by {grew_mib} MiB; WAL and log checked next");
    assert!(
        grew_mib < 50,
        "the service's peak memory grew by {grew_mib} MiB for a 50 MiB line"
    );
    // The WAL that line's pieces went through is truncated once the build ends.
    let wal = std::fs::metadata(dir.join("svc/data/galley.db-wal")).map_or(0, |m| m.len());
    assert!(wal <= 4 << 20, "the WAL holds {wal} bytes after the build");
}

#[test]
fn hardening_a_replay_inside_the_dropped_range_announces_it() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("hardening-dropped-range");
    let project = noisy_project(&dir, 20_000, 0);
    let svc = Service::start(
        &dir.join("svc"),
        &format!(
            "log_cap_bytes = 16384\n[projects.noisy]\npath = \"{}\"\nbase = \"{}\"\n",
            project.display(),
            base_arg()
        ),
        None,
        &[],
    );
    let id = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let rec = svc.wait_final(id, Duration::from_secs(600));
    assert_eq!(rec["status"], "failed", "{rec}");
    // A replay that resumes inside the dropped range is told ids jump, and not told twice.
    let all = svc.all_events(id, None);
    let marker = all
        .iter()
        .find(|e| e.kind == "dropped")
        .expect("a dropped marker");
    let (from, to) = (
        marker.data["from"].as_i64().unwrap(),
        marker.data["to"].as_i64().unwrap(),
    );
    assert_eq!(marker.id, to);
    assert!(from < to, "{marker:?}");
    for resume in [from - 1, from, (from + to) / 2, to - 1] {
        let replay = svc.all_events(id, Some(resume));
        let m = replay
            .iter()
            .position(|e| e.kind == "dropped")
            .unwrap_or_else(|| panic!("no marker after {resume}"));
        assert_eq!(replay[m].id, to, "after {resume}");
        // Nothing of the log comes before the marker: the first jump is announced.
        assert!(
            replay[..m].iter().all(|e| e.kind != "log"),
            "after {resume}"
        );
        assert!(replay.windows(2).all(|w| w[0].id < w[1].id));
    }
    let after = svc.all_events(id, Some(to));
    assert!(after.iter().all(|e| e.kind != "dropped" && e.id > to));
}

#[test]
fn hardening_detached_processes_are_stopped_after_a_successful_build() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("hardening-detached");
    let project = tiny(&dir);
    // A build script that leaves a daemon behind: its own session, no pipe to cargo.
    std::fs::write(
        project.join("build.rs"),
        r#"use std::process::{Command, Stdio};
fn main() {
    Command::new("setsid")
        .args(["sh", "-c", "exec sleep 300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
}
"#,
    )
    .unwrap();
    let svc = Service::start(
        &dir.join("svc"),
        &format!(
            "cancel_grace = \"2s\"\n[projects.tiny]\npath = \"{}\"\nbase = \"{}\"\n",
            project.display(),
            base_arg()
        ),
        None,
        &[],
    );
    let id = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let rec = svc.wait_final(id, Duration::from_secs(600));
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let tag = rec["process_tag"].as_str().unwrap();
    assert!(
        galley::cancel::tagged(tag).is_empty(),
        "tagged processes survive the build"
    );
    let (_, log) = svc.text(&format!("/api/v1/builds/{id}/log"));
    assert!(log.contains("process(es) the build left running"), "{log}");
}

/// A tmpfs of `mib` MiB mounted at `dir` (the tests run as root), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the file system to the last byte, and keeps it full (space another process frees
    /// is taken again at once) until the filler is stopped and removed.
    fn fill(&self) -> Filler {
        let path = self.0.join("filler");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut f = std::fs::File::create(&path).unwrap();
        let full = |f: &mut std::fs::File| {
            let block = vec![0u8; 64 << 10];
            while f.write_all(&block).is_ok() {}
            let small = [0u8; 512];
            while f.write_all(&small).is_ok() {}
        };
        full(&mut f);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    full(&mut f);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Filler { path, stop, thread }
    }
}

/// What keeps a tmpfs full.
struct Filler {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Filler {
    /// Stops filling and gives the space back.
    fn release(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        std::fs::remove_file(&self.path).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn hardening_a_full_disk_at_the_final_write_ends_the_build_failed_when_space_returns() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("hardening-full-disk");
    let project = dir.join("gated");
    copy_fixture("tiny", &project);
    // The build script waits for the test to fill the disk, then lets the build go on.
    let gate = dir.join("gate");
    std::fs::write(
        project.join("build.rs"),
        format!(
            r#"fn main() {{
    // No pipe to cargo: cargo waits for the build script's output to end.
    let _child = std::process::Command::new("sleep")
        .arg("600")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !std::path::Path::new("{}").exists() {{
        std::thread::sleep(std::time::Duration::from_millis(100));
    }}
}}
"#,
            gate.display()
        ),
    )
    .unwrap();
    let svc_dir = dir.join("svc");
    let data = Tmpfs::mount(&svc_dir.join("data"), 96);
    let svc = Service::start(
        &svc_dir,
        &format!(
            "cancel_grace = \"1s\"\n[projects.gated]\npath = \"{}\"\nbase = \"{}\"\n",
            project.display(),
            base_arg()
        ),
        None,
        &[],
    );
    let id = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let (_, rec) = svc.get(&format!("/api/v1/builds/{id}"));
    wait_for_tree(
        rec["process_tag"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    let mut follower = svc.stream(id, None);
    let filler = data.fill();
    std::fs::write(&gate, "").unwrap();
    // The build cannot write its outcome now: it stays open, and /readyz says why.
    let t = Instant::now();
    loop {
        let (s, v) = svc.get("/readyz");
        let why = v["error"]["message"].as_str().unwrap_or("").to_string();
        if s == 503 && why.contains("outcome is waiting") {
            assert_eq!(v["error"]["code"], "not_ready", "{v}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the outcome never waited: {s} {v}\n{}",
            svc.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, rec) = svc.get(&format!("/api/v1/builds/{id}"));
    assert_eq!(rec["status"], "running", "{rec}");
    assert!(svc.stderr().contains("cannot record the outcome"));
    // Space returns: the build ends failed with the reason, its follower gets the end.
    filler.release();
    let rec = svc.wait_final(id, Duration::from_secs(30));
    assert_eq!(rec["status"], "failed", "{rec}");
    assert!(!rec["error"].as_str().unwrap().is_empty(), "{rec}");
    let mut last = None;
    while let Some(e) = follower.next_event() {
        last = Some(e);
    }
    let last = last.expect("events");
    assert_eq!(
        (last.kind.as_str(), &last.data["status"]),
        ("end", &json!("failed"))
    );
    assert_eq!(svc.get("/readyz").0, 200);
    drop(svc);
}
