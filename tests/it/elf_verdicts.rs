//! `galley verify` on real binaries of every kind, built here by cargo-zigbuild, cargo, gcc and zig cc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::{copy_fixture, galley, heavy, repo, require, run_ok, scratch};

/// Real sample binaries, built once per test run.
pub struct Samples {
    pub dir: PathBuf,
}

impl Samples {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn zig_cc(args: &[&str], out: &Path) {
    let hello = repo().join("fixtures/elf/hello.c");
    run_ok(
        Command::new("python3")
            .args(["-m", "ziglang", "cc"])
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(&hello),
    );
}

fn gcc(args: &[&str], out: &Path) {
    let hello = repo().join("fixtures/elf/hello.c");
    run_ok(
        Command::new("gcc")
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(&hello),
    );
}

fn cargo_tiny(project: &Path, subcommand: &str, target: &str) -> PathBuf {
    run_ok(
        Command::new("cargo")
            .current_dir(project)
            .args([
                subcommand,
                "--release",
                "--locked",
                "--target",
                target,
                "--no-default-features",
                "--features",
                "db_sqlite",
            ])
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS"),
    );
    project
        .join("target")
        .join(target)
        .join("release")
        .join("tiny")
}

/// Builds every sample once.
pub fn samples() -> &'static Samples {
    static SAMPLES: OnceLock<Samples> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        require("cargo-zigbuild");
        require("gcc");
        let _heavy = heavy();
        let dir = scratch("elf-samples");
        let project = dir.join("tiny");
        copy_fixture("tiny", &project);
        let copy = |from: PathBuf, name: &str| {
            std::fs::copy(&from, dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        };
        // Rust, the way galley builds: static musl through zig (ET_EXEC, stripped by the linker).
        copy(
            cargo_tiny(&project, "zigbuild", "x86_64-unknown-linux-musl"),
            "rust-musl-zig",
        );
        copy(
            cargo_tiny(&project, "zigbuild", "aarch64-unknown-linux-musl"),
            "rust-musl-aarch64",
        );
        // Rust through rustc's own musl linking: static-pie (ET_DYN with PT_DYNAMIC, no DT_NEEDED), with symbols.
        copy(
            cargo_tiny(&project, "build", "x86_64-unknown-linux-musl"),
            "rust-musl-static-pie",
        );
        // Rust for the host's gnu target: dynamic glibc.
        copy(
            cargo_tiny(&project, "build", "x86_64-unknown-linux-gnu"),
            "rust-gnu-dynamic",
        );
        gcc(&["-O2"], &dir.join("c-glibc-dynamic"));
        gcc(&["-O2", "-static"], &dir.join("c-glibc-static"));
        gcc(&["-O2", "-static-pie"], &dir.join("c-glibc-static-pie"));
        zig_cc(
            &["-target", "x86-linux-musl", "-static", "-O2"],
            &dir.join("c-musl-i386"),
        );
        zig_cc(
            &["-target", "x86_64-linux-musl", "-static", "-g", "-O2"],
            &dir.join("c-musl-debug"),
        );
        zig_cc(
            &["-target", "aarch64-linux-musl", "-static", "-g", "-O2"],
            &dir.join("c-musl-aarch64-debug"),
        );
        let zig = std::fs::read(dir.join("rust-musl-zig")).unwrap();
        std::fs::write(dir.join("truncated-headers"), &zig[..100]).unwrap();
        std::fs::write(dir.join("truncated-half"), &zig[..zig.len() / 2]).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        std::fs::write(
            dir.join("garbage"),
            (0..4096u32)
                .map(|i| (i * 7919 % 251) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::write(dir.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        let _ = std::fs::remove_dir_all(&project);
        Samples { dir }
    })
}

struct Case {
    sample: &'static str,
    target: &'static str,
    acceptable: bool,
    /// Substrings the verdict must contain.
    says: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        sample: "rust-musl-zig",
        target: "x86_64-unknown-linux-musl",
        acceptable: true,
        says: &["acceptable for x86_64-unknown-linux-musl"],
    },
    Case {
        sample: "rust-musl-static-pie",
        target: "x86_64-unknown-linux-musl",
        acceptable: true,
        says: &["ET_DYN", "musl (musl symbol"],
    },
    Case {
        sample: "c-musl-debug",
        target: "x86_64-unknown-linux-musl",
        acceptable: true,
        says: &["musl"],
    },
    Case {
        sample: "rust-musl-aarch64",
        target: "aarch64-unknown-linux-musl",
        acceptable: true,
        says: &["machine:      aarch64"],
    },
    Case {
        sample: "rust-musl-aarch64",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["built for aarch64, not x86_64: build with --target x86_64-unknown-linux-musl"],
    },
    Case {
        sample: "rust-musl-zig",
        target: "aarch64-unknown-linux-musl",
        acceptable: false,
        says: &["built for x86_64, not aarch64"],
    },
    Case {
        sample: "rust-gnu-dynamic",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &[
            "dynamically linked: interpreter /lib64/ld-linux-x86-64.so.2",
            "libc.so.6",
            "build for a -musl target",
        ],
    },
    Case {
        sample: "c-glibc-dynamic",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["needs libc.so.6", "linked against glibc"],
    },
    Case {
        sample: "c-glibc-static",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["linked against glibc"],
    },
    Case {
        sample: "c-glibc-static-pie",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["linked against glibc"],
    },
    Case {
        sample: "c-musl-i386",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["32-bit ELF", "built for i386"],
    },
    Case {
        sample: "empty",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["the file is empty"],
    },
    Case {
        sample: "garbage",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["not an ELF file"],
    },
    Case {
        sample: "script.sh",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["not an ELF file (it starts with bytes 23 21 2f 62)"],
    },
    Case {
        sample: "truncated-headers",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["malformed ELF file", "truncated or corrupt"],
    },
    Case {
        sample: "truncated-half",
        target: "x86_64-unknown-linux-musl",
        acceptable: false,
        says: &["malformed ELF file"],
    },
];

#[test]
fn verdicts_on_real_binaries() {
    let samples = samples();
    let mut failures = Vec::new();
    for case in CASES {
        let out = galley()
            .arg("verify")
            .arg(samples.path(case.sample))
            .arg("--target")
            .arg(case.target)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected_code = if case.acceptable { 0 } else { 1 };
        if out.status.code() != Some(expected_code) {
            failures.push(format!(
                "{} for {}: exit {:?}, want {expected_code}\n{text}",
                case.sample,
                case.target,
                out.status.code()
            ));
        }
        for s in case.says {
            if !text.contains(s) {
                failures.push(format!(
                    "{} for {}: output lacks {s:?}\n{text}",
                    case.sample, case.target
                ));
            }
        }
        assert!(!text.contains("panicked"), "{text}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn verify_json_carries_facts_and_verdict() {
    let samples = samples();
    let out = galley()
        .args(["verify", "--json"])
        .arg(samples.path("c-glibc-dynamic"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["facts"]["interpreter"], "/lib64/ld-linux-x86-64.so.2");
    assert_eq!(v["facts"]["class"], "ELF64");
    assert_eq!(v["verdict"]["acceptable"], false);
    assert!(
        v["facts"]["needed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "libc.so.6"),
        "{v}"
    );
}

#[test]
fn verify_refuses_unknown_targets_and_missing_files() {
    let out = galley()
        .args(["verify", "/nonexistent/binary"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/binary"));
    let out = galley()
        .args([
            "verify",
            "/bin/true",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("unsupported target \"x86_64-unknown-linux-gnu\""));
}

#[test]
fn corrupted_binaries_are_refused_or_judged_never_a_panic() {
    let samples = samples();
    let (mut refused, mut judged) = (0, 0);
    for name in [
        "rust-musl-static-pie",
        "c-glibc-dynamic",
        "rust-musl-aarch64",
    ] {
        let original = std::fs::read(samples.path(name)).unwrap();
        // A fixed xorshift sequence: the same corruptions every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..400 {
            let mut data = original.clone();
            // Corrupt a few bytes, mostly in the headers where the parser looks first.
            for _ in 0..(1 + round % 8) {
                let range = if round % 3 == 0 {
                    data.len()
                } else {
                    4096.min(data.len())
                };
                let at = (next() as usize) % range;
                data[at] = next() as u8;
            }
            if round % 5 == 0 {
                data.truncate((next() as usize) % data.len());
            }
            // A panic here fails the test; every input must end in a refusal or a verdict.
            match galley::elf::inspect(&data) {
                Ok(facts) => {
                    let verdict = galley::elf::judge(&facts, galley::target::Target::X86_64Musl);
                    assert!(verdict.acceptable || !verdict.problems.is_empty());
                    judged += 1;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    refused += 1;
                }
            }
        }
    }
    // Both paths were exercised: some corruptions break the file, some leave it readable.
    assert!(
        refused > 50 && judged > 50,
        "refused {refused}, judged {judged}"
    );
}
