//! Child processes: argv only (never a shell), an allow-listed environment, their own process
//! group so the whole tree can be stopped, output read as bytes and decoded lossily. Every run
//! takes a `Cancel`: its process group is registered there, so cancelling a build stops it.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use crate::cancel::{Cancel, GroupGuard, TAG_ENV};

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

/// The allow-listed variables of this process's environment, as children inherit them.
pub fn inherited_env() -> Vec<(String, String)> {
    ENV_ALLOW
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

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
    #[error("{program} was stopped: {reason}")]
    Cancelled { program: String, reason: String },
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

/// The longest line an error message quotes from a child's output: a message goes into the
/// record, the report and every build view, so a child's megabyte-long line must not.
pub const QUOTED_LINE_BYTES: usize = 1024;

/// `line` cut to `QUOTED_LINE_BYTES` (on a character boundary), saying how much was left out.
pub fn quoted(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= QUOTED_LINE_BYTES {
        return line.into();
    }
    let mut cut = QUOTED_LINE_BYTES;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} more bytes)", &line[..cut], line.len() - cut).into()
}

/// The last `lines` lines of some output, lossily decoded and trimmed, each cut to
/// `QUOTED_LINE_BYTES`.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| quoted(l))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned()
}

/// Spawns a child tagged with the build's cancel tag and registers its process group. A build
/// already cancelled spawns nothing.
fn spawn(cmd: &mut Command, cancel: &Cancel) -> Result<(Child, GroupGuard), ProcError> {
    let program = program_name(cmd);
    cancel.check().map_err(|c| ProcError::Cancelled {
        program: program.clone(),
        reason: c.reason,
    })?;
    cmd.env(TAG_ENV, cancel.tag());
    let child = cmd.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ProcError::NotFound {
                program: program.clone(),
            }
        } else {
            ProcError::Spawn {
                program: program.clone(),
                source,
            }
        }
    })?;
    // process_group(0): the group id is the child's pid.
    let guard = cancel.register(child.id() as i32);
    Ok((child, guard))
}

/// Starts a long-running child (a server) in its own process group, registered with `cancel`:
/// a cancel stops it, and dropping the guard after reaping it stops any member left.
pub fn spawn_child(cmd: &mut Command, cancel: &Cancel) -> Result<(Child, GroupGuard), ProcError> {
    spawn(cmd, cancel)
}

/// Stops a child's whole process group: its grandchildren (rustc, zig, linkers) too.
pub fn kill_group(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The error for a child that ended because its build was cancelled, if it was.
fn cancelled(program: &str, cancel: &Cancel) -> Option<ProcError> {
    cancel.check().err().map(|c| ProcError::Cancelled {
        program: program.to_string(),
        reason: c.reason,
    })
}

/// Runs a command to completion, capturing its output, stopping its process group after
/// `timeout` or when `cancel` fires.
pub fn run_captured(
    cmd: &mut Command,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<Captured, ProcError> {
    run_captured_at(cmd, timeout, cancel, 0)
}

/// Like `run_captured`, for work that may wait: the child runs at nice 10, so a compile running
/// beside it (UPX of one variant while the next compiles) gets the CPU first.
pub fn run_captured_background(
    cmd: &mut Command,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<Captured, ProcError> {
    run_captured_at(cmd, timeout, cancel, 10)
}

fn run_captured_at(
    cmd: &mut Command,
    timeout: Duration,
    cancel: &Cancel,
    nice: i32,
) -> Result<Captured, ProcError> {
    let program = program_name(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, guard) = spawn(cmd, cancel)?;
    if nice != 0 {
        // Best effort: a child that started at normal priority only runs a little longer.
        let _ = rustix::process::setpriority_process(
            rustix::process::Pid::from_raw(child.id() as i32),
            nice,
        );
    }
    let out = reader_thread(child.stdout.take());
    let err = reader_thread(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        // A cancel signals the group itself (SIGTERM, then SIGKILL): keep reaping until it ends.
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
    // The process group may still hold the pipes open (a daemonized grandchild): the guard stops it.
    drop(guard);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if let Some(e) = cancelled(&program, cancel) {
        return Err(e);
    }
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
/// A cancel stops the process group; the result is then `ProcError::Cancelled`.
pub fn run_streaming(
    cmd: &mut Command,
    cancel: &Cancel,
    mut on_stdout: impl FnMut(&str),
    on_stderr: impl FnMut(&str) + Send,
) -> Result<ExitStatus, ProcError> {
    let program = program_name(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (mut child, guard) = spawn(cmd, cancel)?;
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
    drop(guard);
    if let Some(e) = cancelled(&program, cancel) {
        return Err(e);
    }
    result.map_err(|source| ProcError::Io { program, source })
}

/// The most of one line held in memory: a longer one is handed on in pieces of this size, so a
/// child printing megabytes without a newline costs this much, not the whole line. Large enough
/// for cargo's JSON messages (a diagnostic's rendered text included).
pub const MAX_LINE_BYTES: usize = 1 << 20;

fn for_each_line(pipe: impl Read, f: &mut dyn FnMut(&str)) {
    for_each_line_bounded(pipe, MAX_LINE_BYTES, f)
}

fn for_each_line_bounded(pipe: impl Read, max: usize, f: &mut dyn FnMut(&str)) {
    let mut reader = BufReader::new(pipe);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let (used, done) = match reader.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(buf) => {
                let room = max - line.len();
                let window = &buf[..buf.len().min(room)];
                match window.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&window[..i]);
                        (i + 1, true)
                    }
                    None => {
                        line.extend_from_slice(window);
                        (window.len(), line.len() >= max)
                    }
                }
            }
        };
        reader.consume(used);
        if done {
            emit_piece(&mut line, f);
        }
    }
    if !line.is_empty() {
        let text = String::from_utf8_lossy(&line);
        f(text.trim_end_matches(['\n', '\r']));
    }
}

/// Hands on `line` (up to its last whole UTF-8 character when it was cut), keeping the cut-off
/// bytes of a character for the next piece.
fn emit_piece(line: &mut Vec<u8>, f: &mut dyn FnMut(&str)) {
    let cut = match std::str::from_utf8(line) {
        Ok(_) => line.len(),
        // An incomplete character at the end (at most 3 bytes): keep it for the next piece.
        Err(e) if e.error_len().is_none() && line.len() - e.valid_up_to() < 4 => e.valid_up_to(),
        Err(_) => line.len(),
    };
    let rest = line.split_off(cut);
    let text = String::from_utf8_lossy(line);
    f(text.trim_end_matches(['\n', '\r']));
    *line = rest;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_end_is_read_in_bounded_pieces() {
        let mut input = "é".repeat(10).into_bytes(); // 20 bytes, 2 per character
        input.extend_from_slice(b"\nshort\r\nlast");
        let mut got = Vec::new();
        for_each_line_bounded(&input[..], 7, &mut |l| got.push(l.to_string()));
        // Pieces of at most 7 bytes, never a character cut in two.
        assert_eq!(got, ["ééé", "ééé", "ééé", "é", "short", "last"]);
    }

    #[test]
    fn environment_is_allow_listed() {
        // SAFETY: test-only; no other thread of this test reads this variable.
        unsafe { std::env::set_var("GALLEY_TEST_SECRET", "sentinel-password") };
        let out = run_captured(
            command("env").arg("-0"),
            Duration::from_secs(10),
            &Cancel::default(),
        )
        .unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(!env.contains("sentinel-password"), "{env}");
        assert!(env.contains("PATH="));
    }

    #[test]
    fn timeout_stops_the_whole_group() {
        let started = Instant::now();
        let err = run_captured(
            command("sleep").arg("30"),
            Duration::from_millis(200),
            &Cancel::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ProcError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A cancel stops a child and its grandchildren (a shell script running `sleep`), SIGTERM
    /// first; nothing of the group remains.
    #[test]
    fn cancel_stops_the_whole_group_and_its_grandchildren() {
        let cancel = Cancel::new("proc-test-cancel", Duration::from_secs(5));
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            // The test's own script, not user input: a parent with two children.
            let dir = std::env::temp_dir().join(format!("galley-proc-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let script = dir.join("tree.sh");
            std::fs::write(&script, "sleep 300 &\nsleep 300 &\nwait\n").unwrap();
            let mut cmd = command("sh");
            cmd.arg(&script);
            let r = run_captured(&mut cmd, Duration::from_secs(600), &c2);
            let _ = std::fs::remove_dir_all(&dir);
            r
        });
        let started = Instant::now();
        let tagged = loop {
            let t = crate::cancel::tagged("proc-test-cancel");
            if t.len() >= 3 || started.elapsed() > Duration::from_secs(10) {
                break t;
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(tagged.len(), 3, "sh and two sleeps carry the tag");
        cancel.cancel("test");
        let err = t.join().unwrap().unwrap_err();
        assert!(matches!(err, ProcError::Cancelled { .. }), "{err}");
        assert!(cancel.wait_settled(Duration::from_secs(10)));
        for pid in tagged {
            let alive = crate::cancel::processes()
                .iter()
                .any(|p| p.pid == pid && p.state != 'Z');
            assert!(!alive, "{pid} survived the cancel");
        }
        // `sleep` dies of SIGTERM: no SIGKILL was needed.
        assert!(!cancel.forced());
    }

    #[test]
    fn missing_program_is_named() {
        let err = run_captured(
            &mut command("galley-no-such-tool"),
            Duration::from_secs(1),
            &Cancel::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "galley-no-such-tool is not installed (not found on PATH)"
        );
    }
}
