//! The compress stage: `upx --best --lzma`, then `upx -t`, then (for a binary the host can run) a
//! smoke run of the packed binary compared with the unpacked one. Any failure keeps the
//! uncompressed binary and says why; compression never fails a build.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::verify::VerifiedBinary;
use crate::cancel::Cancel;
use crate::proc::{self, tail};
use crate::spec::CompressSpec;

/// What the compress stage did, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Compression {
    /// Whether the image holds the UPX-packed binary.
    pub applied: bool,
    /// `upx --version`'s first line, when UPX ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// How the packed binary was checked: "upx -t", "upx -t + run …".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked: Option<String>,
    /// Why the uncompressed binary was kept (a warning), or why it was not executed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The outcome: the file to package, and what happened.
pub struct Compressed {
    pub packed: bool,
    pub compression: Compression,
    /// A warning for the report when compression was wanted but not applied or not fully checked.
    pub warning: Option<String>,
}

const UPX_TIMEOUT: Duration = Duration::from_secs(600);

/// `upx --version`'s first line, or `None` when UPX does not run.
pub fn upx_version(upx: &Path, cancel: &Cancel) -> Option<String> {
    let mut cmd = proc::command(upx);
    cmd.arg("--version");
    let out = proc::run_captured(&mut cmd, Duration::from_secs(30), cancel).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| text.lines().next().unwrap_or("upx").trim().to_string())
}

/// Packs `input` into `packed_path` when possible, with the UPX whose version is `version`
/// (`None`: UPX is not there). A cancel stops UPX and the smoke runs (the caller checks the
/// handle: the result then says only that nothing was packed).
pub fn compress(
    input: &VerifiedBinary,
    packed_path: &Path,
    spec: &CompressSpec,
    version: Option<String>,
    cancel: &Cancel,
) -> Compressed {
    let keep = |tool: Option<String>, why: String| Compressed {
        packed: false,
        compression: Compression {
            applied: false,
            tool,
            checked: None,
            note: Some(why.clone()),
        },
        warning: Some(format!("{why}; the image holds the uncompressed binary")),
    };
    if !spec.enabled {
        return Compressed {
            packed: false,
            compression: Compression {
                applied: false,
                tool: None,
                checked: None,
                note: Some("compression off (--no-compress)".into()),
            },
            warning: None,
        };
    }
    let Some(version) = version else {
        return keep(None, format!("UPX not available ({} --version failed or not found; install upx-ucl from bookworm-backports)", spec.upx.display()));
    };
    let _ = std::fs::remove_file(packed_path);
    let mut cmd = proc::command(&spec.upx);
    cmd.args(&spec.flags)
        .args(["-q", "--no-progress", "-o"])
        .arg(packed_path)
        .arg(input.path());
    // Packing can wait for the next variant's compile; its CPU goes to cargo first.
    match proc::run_captured_background(&mut cmd, UPX_TIMEOUT, cancel) {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let _ = std::fs::remove_file(packed_path);
            let detail = tail(&[out.stderr.as_slice(), out.stdout.as_slice()].concat(), 2);
            return keep(
                Some(version),
                format!("UPX refused the binary ({}): {detail}", out.status),
            );
        }
        Err(e) => {
            let _ = std::fs::remove_file(packed_path);
            return keep(Some(version), format!("UPX failed: {e}"));
        }
    }

    let mut test = proc::command(&spec.upx);
    test.args(["-t", "-q"]).arg(packed_path);
    match proc::run_captured(&mut test, UPX_TIMEOUT, cancel) {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return keep(
                Some(version),
                format!(
                    "`upx -t` rejected the packed binary ({}): {}",
                    out.status,
                    out.stderr_tail(2)
                ),
            )
        }
        Err(e) => return keep(Some(version), format!("`upx -t` failed: {e}")),
    }

    let packed_size = std::fs::metadata(packed_path)
        .map(|m| m.len())
        .unwrap_or(u64::MAX);
    if packed_size >= input.size() {
        return keep(
            Some(version),
            format!(
                "UPX made the binary no smaller ({packed_size} >= {} bytes)",
                input.size()
            ),
        );
    }

    // Shipped packed but not executed: said in the report as a warning.
    let unexecuted = |version: String, note: String| Compressed {
        packed: true,
        compression: Compression {
            applied: true,
            tool: Some(version),
            checked: Some("upx -t".into()),
            note: Some(note.clone()),
        },
        warning: Some(note),
    };
    let Some(args) = &spec.smoke_args else {
        let note =
            "packed binary not executed (smoke = false in galley.toml); checked by `upx -t` only";
        return unexecuted(version, note.to_string());
    };
    if !input.target().runs_on_host() {
        let note = format!("packed binary not executed: {} binaries cannot run on this host; checked by `upx -t` only", input.target());
        return unexecuted(version, note);
    }

    let shown = args.join(" ");
    let unpacked = match smoke_run(input.path(), args, spec.smoke_timeout, cancel) {
        Ok(out) => out,
        Err(why) => {
            return keep(
                Some(version),
                format!("cannot prove the packed binary works: the unpacked binary with `{shown}` {why}; set image.smoke_args in galley.toml to arguments that exit 0"),
            )
        }
    };
    match smoke_run(packed_path, args, spec.smoke_timeout, cancel) {
        Ok(out) if out == unpacked => Compressed {
            packed: true,
            compression: Compression {
                applied: true,
                tool: Some(version),
                checked: Some(format!("upx -t + run `{shown}`")),
                note: None,
            },
            warning: None,
        },
        Ok(_) => keep(
            Some(version),
            format!("the packed binary printed something else than the unpacked one for `{shown}`"),
        ),
        Err(why) => keep(
            Some(version),
            format!("the packed binary {why} when run with `{shown}`"),
        ),
    }
}

/// Runs a binary with arguments in an empty environment; its stdout when it exits 0.
fn smoke_run(
    binary: &Path,
    args: &[String],
    timeout: Duration,
    cancel: &Cancel,
) -> Result<Vec<u8>, String> {
    let dir = binary.parent().unwrap_or(Path::new("/"));
    let mut cmd = proc::command(binary);
    cmd.env_clear().current_dir(dir).args(args);
    match proc::run_captured(&mut cmd, timeout, cancel) {
        Ok(out) if out.status.success() => Ok(out.stdout),
        Ok(out) => Err(format!(
            "exited with {} ({})",
            out.status,
            out.stderr_tail(1)
        )),
        Err(e) => Err(format!("could not run: {e}")),
    }
}
