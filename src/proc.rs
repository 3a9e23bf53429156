//! Child processes: argv only (never a shell), an allow-listed environment, their own process
//! group so the whole tree can be stopped, output read as bytes and decoded lossily.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// Environment variables a child may inherit. Everything else is dropped, so nothing the service
/// holds (registry credentials, API tokens) reaches a compiler, a build script or UPX.
const ENV_ALLOW: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "ZIG_GLOBAL_CACHE_DIR",
    "ZIG_LOCAL_CACHE_DIR",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CARGO_HTTP_CAINFO",
    "CARGO_NET_OFFLINE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// A command with an allow-listed environment, in its own process group.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for key in ENV_ALLOW {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.stdin(Stdio::null());
    cmd.process_group(0);
    cmd
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{program} is not installed (not found on PATH)")]
    NotFound { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} did not finish within {secs} s and was stopped")]
    TimedOut { program: String, secs: u64 },
    #[error("cannot read the output of {program}: {source}")]
    Io { program: String, source: io::Error },
}

/// What a finished child printed and how it ended.
#[derive(Debug)]
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Captured {
    /// The last few lines of stderr, lossily decoded, for an error message.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr, lines)
    }
}

/// The last `lines` lines of some output, lossily decoded and trimmed.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned()
}

fn spawn(cmd: &mut Command) -> Result<Child, ProcError> {
    let program = program_name(cmd);
    cmd.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ProcError::NotFound { program }
        } else {
            ProcError::Spawn { program, source }
        }
    })
}

/// Stops a child's whole process group: its grandchildren (rustc, zig, linkers) too.
pub fn kill_group(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a command to completion, capturing its output, stopping its process group after `timeout`.
pub fn run_captured(cmd: &mut Command, timeout: Duration) -> Result<Captured, ProcError> {
    let program = program_name(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    let out = reader_thread(child.stdout.take());
    let err = reader_thread(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(&mut child);
                return Err(ProcError::TimedOut {
                    program,
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                kill_group(&mut child);
                return Err(ProcError::Io { program, source });
            }
        }
    };
    // The process group may still hold the pipes open (a daemonized grandchild); stop it.
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Captured {
        status,
        stdout,
        stderr,
    })
}

fn reader_thread(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            // Bounded: a child printing without end cannot exhaust memory.
            let _ = (&mut p).take(16 << 20).read_to_end(&mut buf);
            let _ = io::copy(&mut p, &mut io::sink());
        }
        buf
    })
}

/// Runs a command, handing each line of stdout and stderr (lossily decoded) to callbacks as it
/// arrives. Used for cargo, whose stdout carries JSON messages and stderr the human log.
pub fn run_streaming(
    cmd: &mut Command,
    mut on_stdout: impl FnMut(&str),
    on_stderr: impl FnMut(&str) + Send,
) -> Result<ExitStatus, ProcError> {
    let program = program_name(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let result = thread::scope(|scope| {
        let err_thread = scope.spawn(move || {
            let mut on_stderr = on_stderr;
            if let Some(s) = stderr {
                for_each_line(s, &mut on_stderr);
            }
        });
        if let Some(s) = stdout {
            for_each_line(s, &mut on_stdout);
        }
        let _ = err_thread.join();
        child.wait()
    });
    result.map_err(|source| ProcError::Io { program, source })
}

fn for_each_line(pipe: impl Read, f: &mut dyn FnMut(&str)) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                f(text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_allow_listed() {
        // SAFETY: test-only; no other thread of this test reads this variable.
        unsafe { std::env::set_var("GALLEY_TEST_SECRET", "sentinel-password") };
        let out = run_captured(command("env").arg("-0"), Duration::from_secs(10)).unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(!env.contains("sentinel-password"), "{env}");
        assert!(env.contains("PATH="));
    }

    #[test]
    fn timeout_stops_the_whole_group() {
        let started = Instant::now();
        let err = run_captured(command("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ProcError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_named() {
        let err =
            run_captured(&mut command("galley-no-such-tool"), Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "galley-no-such-tool is not installed (not found on PATH)"
        );
    }
}
