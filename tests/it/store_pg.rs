//! The store on a real PostgreSQL (`pg_cluster`): the contract both backends keep, what the
//! PostgreSQL store refuses (a second live instance with the same worker name, a newer schema, a
//! URL it cannot use, without ever showing the password), and a real `galley serve` whose history
//! lives there.

use std::time::{Duration, Instant};

use galley::store::{conformance, PgStore, StoreError};
use serde_json::json;

use crate::pg_cluster::{cluster, PASSWORD};
use crate::service::Service;
use crate::support::{base_arg, copy_fixture, heavy, require, scratch};

#[test]
fn store_contract_holds_on_postgres() {
    let pg = cluster();
    conformance::run(&|name| {
        let url = pg.database(&format!("contract_{name}"));
        Box::new(PgStore::open(&url, "contract").unwrap())
    });
}

#[test]
fn postgres_store_refuses_a_second_worker_of_one_name_a_newer_schema_and_urls_it_cannot_use() {
    let pg = cluster();
    let url = pg.database("refusals");
    let first = PgStore::open(&url, "w1").unwrap();
    let err = PgStore::open(&url, "w1")
        .err()
        .expect("a second live w1 is refused");
    assert!(matches!(err, StoreError::WorkerInUse { .. }), "{err}");
    assert!(err.to_string().contains("worker w1"), "{err}");
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    // Another name is another worker of the same fleet.
    let second = PgStore::open(&url, "w2").unwrap();
    drop((first, second));
    // The name goes with the connection: a restarted w1 may start at once.
    let again = PgStore::open(&url, "w1").unwrap();
    drop(again);

    pg.sql(
        "refusals",
        "UPDATE galley_meta SET value = '99' WHERE key = 'schema_version'",
    );
    let err = PgStore::open(&url, "w1")
        .err()
        .expect("a newer schema is refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer galley"), "{err}");

    let wrong = url.replace(PASSWORD, "not-the-password");
    let t = Instant::now();
    let err = PgStore::open(&wrong, "w1")
        .err()
        .expect("a wrong password is refused");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{text}");
    assert!(text.contains("galley:***@127.0.0.1"), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    let closed = format!("postgres://galley:{PASSWORD}@127.0.0.1:1/x");
    let err = PgStore::open(&closed, "w1")
        .err()
        .expect("nobody listens there");
    let text = err.to_string();
    assert!(
        text.contains("cannot reach the store postgres://galley:***@127.0.0.1:1/x"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn serve_on_postgres_keeps_its_history_there_and_never_shows_the_password() {
    require("cargo-zigbuild");
    let _heavy = heavy();
    let pg = cluster();
    let url = pg.database("serve");
    let dir = scratch("serve-postgres");
    let project = dir.join("tiny");
    copy_fixture("tiny", &project);
    let config = format!(
        "[projects.tiny]\npath = \"{}\"\nbase = \"{}\"\n",
        project.display(),
        base_arg()
    );
    let mut svc = Service::start(&dir.join("a"), &config, None, &[("GALLEY_STORE", &url)]);
    let id = svc.submit(json!({"variants": ["sqlite"], "version": "1.0.0"}));
    let rec = svc.wait_final(id, Duration::from_secs(600));
    assert_eq!(rec["status"], "succeeded", "{rec}");
    let events = svc.all_events(id, None);
    assert_eq!(events.last().unwrap().kind, "end");
    assert!(
        !svc.dir.join("data/galley.db").exists(),
        "nothing went to SQLite"
    );

    // A second service with the same worker name (the host name, by default) is refused,
    // naming the store without its password.
    let out = crate::support::galley()
        .arg("serve")
        .arg("--config")
        .arg(dir.join("a/serve.toml"))
        .arg("--data-dir")
        .arg(dir.join("other-data"))
        .env("GALLEY_STORE", &url)
        .env_remove("GALLEY_API_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another galley serve is worker")
            && stderr.contains("on the store postgres://galley:***@"),
        "{stderr}"
    );

    // Another service (another data directory) on the same store answers from it.
    svc.terminate();
    let other = Service::start(&dir.join("b"), &config, None, &[("GALLEY_STORE", &url)]);
    let (status, again) = other.get(&format!("/api/v1/builds/{id}"));
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["status"], &again["variants"]),
        (&rec["status"], &rec["variants"])
    );
    assert_eq!(other.all_events(id, None), events);
    // The password is nowhere: not in either service's log, not in the records.
    for text in [svc.stderr(), other.stderr(), again.to_string()] {
        assert!(!text.contains(PASSWORD));
    }
    assert!(
        other.stderr().contains("postgres://galley:***@127.0.0.1"),
        "{}",
        other.stderr()
    );
}

#[test]
fn postgres_store_connects_again_after_the_server_closed_its_connections() {
    use galley::store::{BuildInput, Created, NewBuild, Store};
    let pg = cluster();
    let url = pg.database("reconnect");
    let store = PgStore::open(&url, "w1").unwrap();
    let input = BuildInput {
        project: "tiny".into(),
        variants: vec!["sqlite".into()],
        version: "1.0.0".into(),
        push: false,
        git_ref: None,
        repro_of: None,
        retry_of: None,
        rebase_of: None,
    };
    let build = |hash: &'static str| NewBuild {
        project: "tiny",
        request: &input,
        request_hash: hash,
        started_by: "ci",
        idempotency: None,
        max_queued: 10,
        tag_prefix: "galley-test",
        queued_event: "{}",
    };
    let Created::New(id) = store.create_build(&build("a")).unwrap() else {
        panic!()
    };
    // What a server restart does to every session: terminated.
    pg.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'reconnect'",
    );
    let t = Instant::now();
    let answer = loop {
        // The client learns of the close when it next reads; then it connects again.
        match store.get_build(id) {
            Ok(row) => break row,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "never reconnected: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(answer.unwrap().id, id);
    let t = Instant::now();
    loop {
        match store.create_build(&build("b")) {
            Ok(Created::New(_)) => break,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "never reconnected: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    // The worker's name came back with the writer: no other instance can take it.
    assert!(matches!(
        PgStore::open(&url, "w1"),
        Err(StoreError::WorkerInUse { .. })
    ));
}
