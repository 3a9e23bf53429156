//! Harness for `galley serve`: a real service process on a free loopback port, with its own data
//! directory, spoken to over real HTTP; an SSE client that reads frames as they arrive.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::galley;

/// A running `galley serve`.
pub struct Service {
    child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    pub token: Option<String>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// One SSE event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

impl Service {
    /// Writes `dir/serve.toml` (data_dir and a free port filled in, then `config`) and starts
    /// the service with `env` (plus GALLEY_API_TOKEN when `token` is given).
    pub fn start(dir: &Path, config: &str, token: Option<&str>, env: &[(&str, &str)]) -> Service {
        Self::start_with_args(dir, config, token, env, &[])
    }

    /// Like `start`, with more arguments for `galley serve`.
    pub fn start_with_args(
        dir: &Path,
        config: &str,
        token: Option<&str>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Service {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("serve.toml"),
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{config}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut s = Service {
            child: None,
            url: String::new(),
            dir: dir.to_path_buf(),
            token: token.map(str::to_string),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("serve.err"))
            .unwrap();
        let mut cmd = galley();
        // The service's own stage cache, kept across its restarts.
        cmd.env("GALLEY_CACHE_DIR", self.dir.join("cache"));
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.join("serve.toml"))
            .args(&self.args)
            .env("GALLEY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        match &self.token {
            Some(t) => cmd.env("GALLEY_API_TOKEN", t),
            None => cmd.env_remove("GALLEY_API_TOKEN"),
        };
        let mut child = cmd.spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .trim()
            .strip_prefix("galley serve: listening on ")
            .unwrap_or_else(|| panic!("galley serve did not start: {first:?}\n{}", self.stderr()))
            .to_string();
        self.url = url;
        self.child = Some(child);
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the service wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.err")).unwrap_or_default()
    }

    /// SIGKILL: the service dies without a word (its children stay).
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns its status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let t = Instant::now();
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = c.wait().unwrap();
        (status, t.elapsed())
    }

    /// Waits for the service to exit on its own (after a signal sent elsewhere).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }

    /// Starts the service again on the same data directory (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    fn auth(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// GET; returns the status and the body as JSON (Null when it is not JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .auth(Self::client().get(format!("{}{path}", self.url)))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
        )
    }

    /// GET as text.
    pub fn text(&self, path: &str) -> (u16, String) {
        let r = self
            .auth(Self::client().get(format!("{}{path}", self.url)))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// POST a JSON body (or none); returns the status, headers and JSON body.
    pub fn post(
        &self,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        // Every POST says JSON, with a body or not (the service refuses others).
        let mut rb = self
            .auth(Self::client().post(format!("{}{path}", self.url)))
            .header("content-type", "application/json");
        if let Some(b) = body {
            rb = rb.body(b.to_string());
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().unwrap();
        let status = r.status().as_u16();
        let h = r.headers().clone();
        (
            status,
            h,
            serde_json::from_str(&r.text().unwrap()).unwrap_or(Value::Null),
        )
    }

    pub fn delete(&self, path: &str) -> u16 {
        self.auth(Self::client().delete(format!("{}{path}", self.url)))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    /// Submits a build; returns its id (asserting 202).
    pub fn submit(&self, body: Value) -> i64 {
        let (status, _, v) = self.post("/api/v1/builds", Some(&body), &[]);
        assert_eq!(status, 202, "{v}\n{}", self.stderr());
        v["id"].as_i64().unwrap()
    }

    /// Waits until the build has a final status; returns its record.
    pub fn wait_final(&self, id: i64, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (status, v) = self.get(&format!("/api/v1/builds/{id}"));
            assert_eq!(status, 200, "{v}");
            let s = v["status"].as_str().unwrap();
            if !matches!(s, "queued" | "running") {
                return v;
            }
            assert!(
                started.elapsed() < limit,
                "build {id} still {s} after {limit:?}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Opens the event stream after `last` (as `Last-Event-ID`).
    pub fn stream(&self, id: i64, last: Option<i64>) -> SseReader {
        let mut rb = self.auth(
            reqwest::blocking::Client::builder()
                .timeout(None)
                .build()
                .unwrap()
                .get(format!("{}/api/v1/builds/{id}/events", self.url)),
        );
        if let Some(l) = last {
            rb = rb.header("Last-Event-ID", l.to_string());
        }
        let resp = rb.send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        SseReader {
            lines: BufReader::new(Box::new(resp)),
            comments: 0,
        }
    }

    /// Every event of a build from `last` to its end.
    pub fn all_events(&self, id: i64, last: Option<i64>) -> Vec<Sse> {
        let mut r = self.stream(id, last);
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

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads SSE frames from a response body.
pub struct SseReader {
    lines: BufReader<Box<dyn Read + Send>>,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
}

impl SseReader {
    pub fn new(body: Box<dyn Read + Send>) -> SseReader {
        SseReader {
            lines: BufReader::new(body),
            comments: 0,
        }
    }

    /// Reads until a comment line (a heartbeat); false when the stream ends first.
    pub fn wait_comment(&mut self) -> bool {
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) | Err(_) => return false,
                Ok(_) if line.starts_with(':') => {
                    self.comments += 1;
                    return true;
                }
                Ok(_) => {}
            }
        }
    }

    /// The next event; `None` when the stream ended.
    pub fn next_event(&mut self) -> Option<Sse> {
        let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(id) = id {
                    return Some(Sse {
                        id,
                        kind,
                        data: serde_json::from_str(&data).unwrap_or(Value::Null),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = value.parse().ok(),
                "event" => kind = value.to_string(),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
    }
}

/// `Command` to run `git` in `dir` with a fixed identity, asserting success.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "galley tests")
        .env("GIT_AUTHOR_EMAIL", "tests@galley.invalid")
        .env("GIT_COMMITTER_NAME", "galley tests")
        .env("GIT_COMMITTER_EMAIL", "tests@galley.invalid")
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
