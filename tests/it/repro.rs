//! `galley repro`: a recorded build built again in a fresh directory, every digest compared, and
//! differences named down to the key or the file.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use galley::cancel::tagged;

use crate::cancel::{comm, survivors, wait_for_tree};
use crate::support::{build_ok, copy_fixture, galley, heavy, require, run_ok, scratch};

fn repro(report: &Path, work: &Path, args: &[&str]) -> (Output, Option<serde_json::Value>) {
    require("cargo-zigbuild");
    // From another directory than the build's: nothing may depend on where galley runs.
    let cwd = work.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = galley()
        .arg("repro")
        .arg(report)
        .arg("--json")
        .arg("--work-dir")
        .arg(work)
        .args(args)
        .current_dir(&cwd)
        .output()
        .unwrap();
    let verdict = serde_json::from_slice(&out.stdout).ok();
    (out, verdict)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every difference of every variant, as (variant, what).
fn differences(v: &serde_json::Value) -> Vec<(String, String)> {
    v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|var| {
            var["differences"].as_array().unwrap().iter().map(move |d| {
                (
                    var["variant"].as_str().unwrap().to_string(),
                    d["what"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

/// The difference `what` of `variant`.
fn difference<'a>(v: &'a serde_json::Value, variant: &str, what: &str) -> &'a serde_json::Value {
    v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["variant"] == variant)
        .and_then(|x| {
            x["differences"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["what"] == what)
        })
        .unwrap_or_else(|| panic!("no {what} difference for {variant}: {v:#}"))
}

fn work_dirs(work: &Path) -> Vec<String> {
    std::fs::read_dir(work)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("galley-repro-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_rebuild_in_another_directory_matches_every_digest_and_names_what_changed() {
    let _heavy = heavy();
    let dir = scratch("repro-cmd");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let out = dir.join("out");
    let report = build_ok(
        &project,
        &out,
        &["--variants", "sqlite,postgres", "--version", "1.4.2"],
        &[],
    );
    let report_path = out.join("report.json");
    let work = dir.join("work");

    // 1. The same inputs: identical, every variant, tools as recorded.
    let (o, v) = repro(&report_path, &work, &["--keep"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = v.expect("a JSON verdict");
    assert_eq!(v["identical"], true, "{v:#}");
    for name in ["sqlite", "postgres"] {
        let var = v["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["variant"] == name)
            .unwrap();
        assert_eq!(var["identical"], true);
        assert_eq!(
            var["rebuilt"],
            crate::support::variant(&report, name)["digest"]
        );
    }
    let statuses: Vec<(&str, &str)> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tool"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("rustc", "same"),
            ("cargo-zigbuild", "same"),
            ("zig", "same"),
            ("upx", "same")
        ]
    );
    // It really built: its own sources at another path, its own target dir, its own layout.
    let kept = Path::new(v["rebuilt_in"].as_str().unwrap());
    assert!(kept.starts_with(&work), "{}", kept.display());
    assert!(kept.join("src/tiny/Cargo.toml").is_file());
    assert!(kept
        .join("target/x86_64-unknown-linux-musl/release/tiny")
        .is_file());
    assert_eq!(
        std::fs::read(kept.join("out/index.json")).unwrap(),
        std::fs::read(out.join("index.json")).unwrap(),
        "the rebuilt layout's index is the recorded one, byte for byte"
    );
    std::fs::remove_dir_all(kept).unwrap();

    // 2. Another SOURCE_DATE_EPOCH: different, and the keys and file times say so.
    let (o, v) = repro(&report_path, &work, &["--source-date-epoch", "1700000001"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = v.unwrap();
    assert_eq!(v["identical"], false);
    let config = difference(&v, "sqlite", "config");
    let keys: Vec<&str> = config["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"created"), "{keys:?}");
    let created = config["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "created")
        .unwrap();
    assert_eq!(created["recorded"], "\"2023-11-14T22:13:20Z\"");
    assert_eq!(created["rebuilt"], "\"2023-11-14T22:13:21Z\"");
    let layer = difference(&v, "sqlite", "layer");
    let tiny = layer["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/app/tiny")
        .unwrap_or_else(|| panic!("{layer:#}"));
    assert_eq!(tiny["change"], "changed");
    assert_eq!(tiny["fields"][0]["key"], "mtime", "{tiny:#}");
    assert!(
        stderr(&o).contains("key created: \"2023-11-14T22:13:20Z\" -> \"2023-11-14T22:13:21Z\""),
        "{}",
        stderr(&o)
    );
    // Without --keep the fresh directory is gone.
    assert!(work_dirs(&work).is_empty(), "{:?}", work_dirs(&work));

    // 3. A tool version the report lacks is said first, before any comparison.
    let mut edited: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    edited["tools"].as_object_mut().unwrap().remove("zig");
    let edited_path = out.join("report-without-zig.json");
    std::fs::write(&edited_path, serde_json::to_vec(&edited).unwrap()).unwrap();
    let (o, v) = repro(&edited_path, &work, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let zig = v.unwrap()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tool"] == "zig")
        .cloned()
        .unwrap();
    assert_eq!(zig["status"], "not recorded");
    let err = stderr(&o);
    let said = err.find("zig: not recorded").expect(&err);
    let compared = err.find("sqlite: identical").expect(&err);
    let compile = err.find("compile:").expect(&err);
    assert!(said < compile && said < compared, "{err}");

    // 4. The source changed since the build: the binary and the file in the layer differ.
    let main = project.join("src/main.rs");
    let code = std::fs::read_to_string(&main).unwrap();
    assert!(code.contains("tiny serving with"));
    std::fs::write(
        &main,
        code.replace("tiny serving with", "tiny now serving with"),
    )
    .unwrap();
    let (o, v) = repro(&report_path, &work, &[]);
    std::fs::write(&main, code).unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = v.unwrap();
    let whats = differences(&v);
    assert!(
        whats.contains(&("sqlite".into(), "binary (raw)".into())),
        "{whats:?}"
    );
    let layer = difference(&v, "postgres", "layer");
    let tiny = layer["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/app/tiny")
        .unwrap_or_else(|| panic!("{layer:#}"));
    let fields: Vec<&str> = tiny["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"content sha256"), "{fields:?}");
    assert!(
        stderr(&o).contains("file /app/tiny changed"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("verdict: DIFFERENT"), "{}", stderr(&o));

    // 5. Not a report: exit 2 and what is wrong.
    let (o, _) = repro(&project.join("Cargo.toml"), &work, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is not a galley report"),
        "{}",
        stderr(&o)
    );
    assert!(work_dirs(&work).is_empty(), "{:?}", work_dirs(&work));
}

#[test]
fn a_git_project_is_rebuilt_from_the_recorded_commit() {
    let _heavy = heavy();
    let dir = scratch("repro-git");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .arg("-C")
                .arg(&project)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args),
        )
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "tiny"]);
    let out = dir.join("out");
    let report = build_ok(
        &project,
        &out,
        &["--variants", "sqlite", "--version", "1.0.0"],
        &[],
    );
    let commit = report["revision"].as_str().unwrap().to_string();
    assert_eq!(commit.len(), 40, "{report}");
    // Work goes on after the build, uncommitted: repro builds the commit, not the work.
    std::fs::write(project.join("src/extra.rs"), "pub fn x() {}\n").unwrap();
    let main = project.join("src/main.rs");
    let code = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("mod extra;\n{code}")).unwrap();
    let (o, v) = repro(&out.join("report.json"), &dir.join("work"), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = v.unwrap();
    assert_eq!(v["identical"], true, "{v:#}");
    assert!(
        v["sources"].as_str().unwrap().contains(&commit),
        "{}",
        v["sources"]
    );
}

#[test]
fn ctrl_c_of_galley_repro_stops_the_rebuild_and_removes_its_directory() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let dir = scratch("repro-ctrl-c");
    let (project, out, _) = crate::support::tiny_sqlite_built(&dir);
    // Since the build, a build script that holds a process tree: the rebuild's compile hangs.
    std::fs::write(
        project.join("build.rs"),
        "fn main() {\n    let _c = std::process::Command::new(\"sleep\").arg(\"600\").spawn().unwrap();\n    std::thread::sleep(std::time::Duration::from_secs(600));\n}\n",
    )
    .unwrap();
    let work = dir.join("work");
    let mut child = galley()
        .arg("repro")
        .arg(out.join("report.json"))
        .arg("--work-dir")
        .arg(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tag = format!("galley-repro-{}", child.id());
    let tree = wait_for_tree(&tag, Duration::from_secs(300));
    assert!(
        tree.iter().any(|(p, _)| comm(*p) == "cargo"),
        "{:?}",
        tree.iter().map(|(p, _)| comm(*p)).collect::<Vec<_>>()
    );
    assert_eq!(work_dirs(&work).len(), 1, "the rebuild had started");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let sent = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(took < Duration::from_secs(11), "took {took:?}: {err}");
    let left = survivors(&tree);
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    assert!(tagged(&tag).is_empty());
    assert!(work_dirs(&work).is_empty(), "{:?}", work_dirs(&work));
}
