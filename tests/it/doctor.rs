//! `galley doctor` against Debian's docker-registry: anonymous, htpasswd with a good and a bad
//! password, token auth, a read-only token and a refused connection. Each check's line and the
//! exit status; no upload session is left in the registry's storage; no secret is printed.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::real_registry::{Auth, RealRegistry};
use crate::registry_e2e::seed_base;
use crate::support::galley;

const PASSWORD: &str = "doctor-secret-0123";

/// Runs `galley doctor --json` (with `--username` and the password on stdin when given).
fn doctor(args: &[&str], login: Option<(&str, &str)>) -> (Output, Value) {
    let mut cmd = galley();
    cmd.arg("doctor").args(args).arg("--json");
    if let Some((user, _)) = login {
        cmd.args(["--username", user, "--password-stdin"]);
    }
    let mut child = cmd
        .env("DOCKER_CONFIG", "/nonexistent-galley-doctor")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some((_, password)) = login {
        writeln!(stdin, "{password}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        assert!(!text.contains(PASSWORD), "the password was printed: {text}");
    }
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

/// `name -> status` of every check.
fn statuses(v: &Value) -> Vec<(String, String)> {
    v["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks: {v}"))
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status_of<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
}

/// No upload session is open in the registry's storage: no `_uploads/<id>` holds the `data` or
/// `startedat` of one. (Debian's docker-registry 2.8 leaves the `hashstates/` of a cancelled
/// session behind, also after `curl -X DELETE`; the session itself is gone: its URL answers 404.)
fn no_uploads_left(storage: &Path) {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if e.file_name() == "_uploads" {
                for session in std::fs::read_dir(&p).unwrap().flatten() {
                    for file in ["data", "startedat"] {
                        if session.path().join(file).exists() {
                            found.push(session.path().join(file).display().to_string());
                        }
                    }
                }
            } else {
                walk(&p, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(storage, &mut found);
    assert!(found.is_empty(), "upload sessions left open: {found:?}");
}

#[test]
fn doctor_checks_an_anonymous_registry_and_a_mount_from_the_base() {
    let reg = RealRegistry::start(Auth::Anonymous);
    let host = reg.host();
    let repo = format!("{host}/team/doctor");
    let (out, v) = doctor(&[&repo], None);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(
        statuses(&v),
        [
            ("reach", "ok"),
            ("auth", "ok"),
            ("pull", "ok"),
            ("push", "ok"),
            ("mount", "skip"),
            ("referrers", "ok"),
            ("clock", "ok"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert!(
        status_of(&v, "pull")["detail"]
            .as_str()
            .unwrap()
            .contains("does not exist yet"),
        "{v}"
    );
    assert_eq!(v["credentials"], "none found: anonymous");
    // With the base on the same registry: its blobs mount.
    seed_base(&host, None);
    let base = format!("{host}/library/busybox:3.20");
    let (out, v) = doctor(&[&repo, "--base", &base], None);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(status_of(&v, "mount")["status"], "ok", "{v}");
    no_uploads_left(&reg.storage());
    // The human form: one line per check.
    let human = galley().args(["doctor", &repo]).output().unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    for name in [
        "reach",
        "auth",
        "pull",
        "push",
        "mount",
        "referrers",
        "clock",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(name)
                    || l.contains(name) && l.trim_start().starts_with("skip")),
            "{name}: {text}"
        );
    }
    // Bad input: exit 2 with a reason.
    let (out, _) = doctor(&[&format!("{repo}:1.0")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("repository alone"));
    let (out, _) = doctor(&["not a reference"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn doctor_tells_good_credentials_from_bad_and_a_read_only_token() {
    let user = ("ci", PASSWORD);
    let wrong = ("ci", "not-the-password");
    // htpasswd.
    let reg = RealRegistry::start(Auth::Basic {
        user: user.0.into(),
        password: PASSWORD.into(),
    });
    let repo = format!("{}/team/doctor", reg.host());
    let (out, v) = doctor(&[&repo], Some(user));
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(status_of(&v, "push")["status"], "ok", "{v}");
    assert_eq!(v["credentials"], "--username and --password-stdin");
    let (out, v) = doctor(&[&repo], Some(wrong));
    assert_eq!(out.status.code(), Some(1), "{v}");
    let auth = status_of(&v, "auth");
    assert_eq!(auth["status"], "fail", "{v}");
    assert!(auth["hint"].as_str().unwrap().contains("password"), "{v}");
    no_uploads_left(&reg.storage());
    drop(reg);

    // Token auth.
    let reg = RealRegistry::start(Auth::Token {
        user: user.0.into(),
        password: PASSWORD.into(),
        expires_in: 300,
    });
    let repo = format!("{}/team/doctor", reg.host());
    let (out, v) = doctor(&[&repo], Some(user));
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert!(
        status_of(&v, "reach")["detail"]
            .as_str()
            .unwrap()
            .contains("Bearer"),
        "{v}"
    );
    let (out, v) = doctor(&[&repo], Some(wrong));
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(status_of(&v, "auth")["status"], "fail", "{v}");
    no_uploads_left(&reg.storage());
    drop(reg);

    // A token that may only pull.
    let reg = RealRegistry::start(Auth::TokenReadOnly {
        user: user.0.into(),
        password: PASSWORD.into(),
    });
    let repo = format!("{}/team/doctor", reg.host());
    let (out, v) = doctor(&[&repo], Some(user));
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(status_of(&v, "pull")["status"], "ok", "{v}");
    let push = status_of(&v, "push");
    assert_eq!(push["status"], "fail", "{v}");
    assert!(push["hint"].as_str().unwrap().contains("read-only"), "{v}");
    no_uploads_left(&reg.storage());
}

#[test]
fn doctor_on_a_refused_connection_says_so_and_checks_nothing_else() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (out, v) = doctor(&[&format!("127.0.0.1:{port}/team/doctor")], None);
    assert_eq!(out.status.code(), Some(1), "{v}");
    let reach = status_of(&v, "reach");
    assert_eq!(reach["status"], "fail", "{v}");
    assert!(
        reach["hint"].as_str().unwrap().contains("host and port"),
        "{v}"
    );
    let rest: Vec<_> = statuses(&v).into_iter().skip(1).collect();
    assert!(
        !rest.is_empty() && rest.iter().all(|(_, s)| s == "skip"),
        "{v}"
    );
}

/// `GET /api/v1/registry/check`: the same checks for a project's push repository, from a real
/// `galley serve`; a project without one answers 409.
#[test]
fn doctor_through_the_service_checks_a_projects_push_repository() {
    let reg = RealRegistry::start(Auth::Anonymous);
    let dir = crate::support::scratch("doctor-serve");
    let project = dir.join("tiny");
    crate::support::copy_fixture("tiny", &project);
    let svc = crate::service::Service::start(
        &dir.join("svc"),
        &format!(
            "[projects.tiny]\npath = \"{0}\"\npush = \"{1}/team/tiny\"\n[projects.local]\npath = \"{0}\"\n",
            project.display(),
            reg.host()
        ),
        None,
        &[("DOCKER_CONFIG", "/nonexistent-galley-doctor")],
    );
    let (status, v) = svc.get("/api/v1/registry/check?project=tiny");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["failed"], false, "{v}");
    assert_eq!(v["repository"], format!("{}/team/tiny", reg.host()));
    assert_eq!(status_of(&v, "push")["status"], "ok", "{v}");
    no_uploads_left(&reg.storage());
    let (status, v) = svc.get("/api/v1/registry/check?project=local");
    assert_eq!(
        (status, &v["error"]["code"]),
        (409, &Value::from("no_push_repository"))
    );
}
