//! Ctrl-C of `galley build` stops every child process of the build (checked in /proc) and leaves
//! no temporary file, no half-written layout and no tag.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use galley::cancel::{processes, tagged};

use crate::support::{base_arg, copy_fixture, galley, heavy, require, scratch, EPOCH};

/// The tiny fixture with a build script that starts a `sleep` child and then sleeps itself:
/// a compile that holds a tree of processes (cargo, the build script, its child) for minutes.
pub fn slow_project(dir: &Path) -> PathBuf {
    let project = dir.join("slow");
    copy_fixture("tiny", &project);
    std::fs::write(
        project.join("build.rs"),
        r#"fn main() {
    let _child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
}
"#,
    )
    .unwrap();
    project
}

/// The name a process runs under (`/proc/PID/comm`).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits until a `sleep` process carrying `tag` runs (the build script's child: the whole
/// compile tree is up). Returns every tagged pid with its process group.
pub fn wait_for_tree(tag: &str, limit: Duration) -> Vec<(i32, i32)> {
    let started = Instant::now();
    loop {
        let pids = tagged(tag);
        if pids.iter().any(|p| comm(*p) == "sleep") {
            let all = processes();
            return pids
                .iter()
                .filter_map(|pid| all.iter().find(|p| p.pid == *pid))
                .map(|p| (p.pid, p.pgid))
                .collect();
        }
        assert!(
            started.elapsed() < limit,
            "the build never reached its build script's sleep (tagged: {pids:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids of `tree` still alive (zombies do not count), and any process in one of its groups.
pub fn survivors(tree: &[(i32, i32)]) -> Vec<String> {
    processes()
        .iter()
        .filter(|p| p.state != 'Z' && p.state != 'X')
        .filter(|p| {
            tree.iter()
                .any(|(pid, pgid)| p.pid == *pid || p.pgid == *pgid)
        })
        .map(|p| format!("{} ({}, group {})", p.pid, comm(p.pid), p.pgid))
        .collect()
}

/// Starts `galley build` of the sqlite variant of `project` (without UPX) into `out`, with
/// `extra` arguments; its stderr is piped.
pub fn slow_build(project: &Path, out: &Path, extra: &[&str]) -> Child {
    galley()
        .arg("build")
        .arg("--project")
        .arg(project)
        .arg("--output")
        .arg(out)
        .arg("--base")
        .arg(base_arg())
        .args([
            "--variants",
            "sqlite",
            "--version",
            "1.0.0",
            "--no-compress",
        ])
        .args(extra)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGINT (Ctrl-C) to `child` and waits: its exit status, how long it took to end after
/// the signal, and its stderr.
pub fn interrupt(child: &mut Child) -> (ExitStatus, Duration, String) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let sent = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    (status, took, stderr)
}

#[test]
fn ctrl_c_of_galley_build_stops_every_child_and_leaves_nothing() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("cancel-ctrl-c");
    let project = slow_project(&dir);
    let out = dir.join("out");
    let mut child = slow_build(&project, &out, &[]);
    let tag = format!("galley-cli-{}", child.id());
    let tree = wait_for_tree(&tag, Duration::from_secs(300));
    let names: Vec<String> = tree.iter().map(|(p, _)| comm(*p)).collect();
    assert!(
        names.iter().any(|n| n == "cargo") && names.iter().any(|n| n.starts_with("build-script")),
        "{names:?}"
    );
    assert!(out.join(".galley-work").is_dir(), "the build had started");

    let (status, took, stderr) = interrupt(&mut child);
    assert_eq!(status.code(), Some(130), "{stderr}");
    // The grace period (10 s) plus a second, at most.
    assert!(took < Duration::from_secs(11), "took {took:?}: {stderr}");
    let left = survivors(&tree);
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    assert!(tagged(&tag).is_empty());
    assert!(
        stderr.contains("every child process stopped") && stderr.contains("no tag moved"),
        "{stderr}"
    );
    // The output directory was created by this build: nothing of it is left.
    assert!(!out.exists(), "{} left behind", out.display());
}
