//! A real PostgreSQL for the tests: Debian's `postgresql` binaries, a cluster made by `initdb` in
//! a temporary directory, one `postgres` listening on a free loopback port, password
//! (scram-sha-256) authentication. Started once per test process; a watchdog stops it when the
//! test process ends, however it ends (it waits for the end of a pipe only this process holds).
//! Each test takes a database of its own (`database`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const USER: &str = "galley";
pub const PASSWORD: &str = "sentinel-pg-password-77";

/// The running cluster.
pub struct Pg {
    pub port: u16,
    pub dir: PathBuf,
    /// Held open for the life of the process: its end is the watchdog's signal.
    _watchdog: Mutex<ChildStdin>,
    /// The server and the watchdog: the watchdog ends the server (whichever runs then: it reads
    /// the pid from `postmaster.pid`) when this process ends, and init reaps both.
    children: Mutex<(Child, Child)>,
}

/// Starts `postgres` on the cluster in `root` (its own process group: a test's Ctrl-C does not
/// reach it before the watchdog).
fn spawn_server(root: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("postgres.log"))
        .unwrap();
    let mut postgres = Command::new(bin_dir().join("postgres"));
    postgres
        .arg("-D")
        .arg(root.join("cluster"))
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", root.display()))
        .args(["-c", "fsync=off", "-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    as_owner(&mut postgres, root);
    postgres.process_group(0);
    postgres.spawn().unwrap()
}

/// The directory of Debian's PostgreSQL binaries (`/usr/lib/postgresql/15/bin`).
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/setup.sh first")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no initdb under /usr/lib/postgresql: run scripts/setup.sh first")
}

/// PostgreSQL refuses to run as root: as root, its processes run as the `postgres` user.
fn as_owner(cmd: &mut Command, dir: &Path) {
    // Not the checkout's directory either: a clone may live where only root can enter.
    cmd.current_dir(dir);
    if rustix::process::geteuid().is_root() {
        let out = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let out = Command::new("id")
            .args(["-g", "postgres"])
            .output()
            .unwrap();
        let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let _ = Command::new("chown")
            .args(["-R", &format!("{uid}:{gid}")])
            .arg(dir)
            .status();
        cmd.uid(uid).gid(gid);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The cluster, started the first time it is asked for.
pub fn cluster() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(start)
}

fn start() -> Pg {
    let bin = bin_dir();
    // Outside the checkout: the `postgres` user must reach it, and a clone may live in a
    // directory only root can enter (mktemp -d).
    let root = std::env::temp_dir().join(format!("galley-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let dir = root.join("cluster");
    let pwfile = root.join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&dir)
        .args(["-U", USER, "-A", "scram-sha-256", "--no-sync", "-E", "UTF8"])
        .arg(format!("--pwfile={}", pwfile.display()));
    as_owner(&mut initdb, &root);
    let out = initdb.output().unwrap();
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let server = spawn_server(&root, port);
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read _; pid=$(head -1 '{dir}/cluster/postmaster.pid' 2>/dev/null); [ -n \"$pid\" ] && kill -INT $pid 2>/dev/null; sleep 3; [ -n \"$pid\" ] && kill -KILL $pid 2>/dev/null; rm -rf '{dir}'",
            dir = root.display()
        ))
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdin = watchdog.stdin.take().unwrap();
    let pg = Pg {
        port,
        dir: root,
        _watchdog: Mutex::new(stdin),
        children: Mutex::new((server, watchdog)),
    };
    pg.wait_up();
    pg
}

impl Pg {
    /// Waits (30 s at most) until the server takes connections.
    fn wait_up(&self) {
        let pg = self;
        let started = Instant::now();
        loop {
            match postgres::Client::connect(&pg.url("postgres"), postgres::NoTls) {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "PostgreSQL did not start: {e}\n{}",
                        std::fs::read_to_string(pg.dir.join("postgres.log")).unwrap_or_default()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Restarts the server as an operator would (a fast shutdown, then a start): every session
    /// is closed, connections are refused meanwhile, committed data stays.
    pub fn restart(&self) {
        let mut children = self.children.lock().unwrap();
        let pid = rustix::process::Pid::from_raw(children.0.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        children.0.wait().unwrap();
        children.0 = spawn_server(&self.dir, self.port);
        drop(children);
        self.wait_up();
    }

    /// The URL of database `db` (with the password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database for one test; returns its URL.
    pub fn database(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls).unwrap();
        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        self.url(name)
    }

    /// Runs SQL on database `db`.
    pub fn sql(&self, db: &str, sql: &str) {
        let mut c = postgres::Client::connect(&self.url(db), postgres::NoTls).unwrap();
        c.batch_execute(sql).unwrap();
    }
}
