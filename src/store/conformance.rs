//! The contract every `Store` keeps, as checks any backend's tests run (`run`): SQLite's unit
//! tests and PostgreSQL's integration tests call the same functions. Compiled in (small), so the
//! integration tests can reach it; not part of galley's interface.

use std::time::Duration;

use super::*;

/// Runs every check, each on a fresh store from `make(name)`.
pub fn run(make: &dyn Fn(&str) -> Box<dyn Store>) {
    status_only_moves_forward(make("forward").as_ref());
    idempotency_and_queue_limit(make("idem").as_ref());
    retention_keeps_the_newest_finished_builds_and_never_a_running_one(make("retention").as_ref());
    sequences_are_contiguous_and_a_dropped_middle_replays_as_one_marker(make("seq").as_ref());
    history_queries_and_interruption(make("history").as_ref());
}

fn input(version: &str) -> BuildInput {
    BuildInput {
        project: "tiny".into(),
        variants: vec!["sqlite".into()],
        version: version.into(),
        push: false,
        git_ref: None,
        repro_of: None,
    }
}

fn new_build<'a>(req: &'a BuildInput, key: Option<(&'a str, &'a str)>) -> NewBuild<'a> {
    NewBuild {
        project: "tiny",
        request: req,
        request_hash: "h1",
        started_by: "ci",
        idempotency: key,
        max_queued: 2,
        tag_prefix: "galley-test",
        queued_event: "{\"status\":\"queued\"}",
    }
}

fn log(n: usize) -> NewEvent {
    NewEvent {
        kind: "log",
        data: format!("{{\"line\":{n}}}"),
        log_bytes: 10,
    }
}

pub fn status_only_moves_forward(s: &dyn Store) {
    let req = input("1.0.0");
    let Created::New(id) = s.create_build(&new_build(&req, None)).unwrap() else {
        panic!()
    };
    let started = Started::default();
    let finished = Finished::default();
    s.append(
        id,
        &[],
        Some((BuildStatus::Running, StatusFacts::Started(&started))),
    )
    .unwrap();
    s.append(
        id,
        &[],
        Some((BuildStatus::Succeeded, StatusFacts::Finished(&finished))),
    )
    .unwrap();
    for back in [
        BuildStatus::Running,
        BuildStatus::Cancelled,
        BuildStatus::Failed,
    ] {
        let facts = Finished::default();
        let err = s
            .append(id, &[log(1)], Some((back, StatusFacts::Finished(&facts))))
            .unwrap_err();
        assert!(matches!(err, StoreError::Transition { .. }), "{err}");
    }
    // Nothing of the refused transactions was written.
    assert_eq!(s.events_after(id, 0, 100).unwrap().len(), 1);
    assert_eq!(
        s.get_build(id).unwrap().unwrap().process_tag,
        format!("galley-test-{id}")
    );
}

pub fn idempotency_and_queue_limit(s: &dyn Store) {
    let req = input("1.0.0");
    let first = s
        .create_build(&new_build(&req, Some(("ci", "k1"))))
        .unwrap();
    let Created::New(id) = first else { panic!() };
    assert_eq!(
        s.create_build(&new_build(&req, Some(("ci", "k1"))))
            .unwrap(),
        Created::Replayed(id)
    );
    let mut other = new_build(&req, Some(("ci", "k1")));
    other.request_hash = "h2";
    assert_eq!(s.create_build(&other).unwrap(), Created::KeyConflict);
    // Another principal's key space is its own.
    assert!(matches!(
        s.create_build(&new_build(&req, Some(("ops", "k1"))))
            .unwrap(),
        Created::New(_)
    ));
    assert_eq!(
        s.create_build(&new_build(&req, None)).unwrap(),
        Created::QueueFull
    );
}

pub fn retention_keeps_the_newest_finished_builds_and_never_a_running_one(s: &dyn Store) {
    let req = input("1.0.0");
    let mut nb = new_build(&req, None);
    nb.max_queued = 100;
    let ids: Vec<i64> = (0..5)
        .map(|_| match s.create_build(&nb).unwrap() {
            Created::New(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let finished = Finished::default();
    for id in &ids[..4] {
        s.append(
            *id,
            &[],
            Some((BuildStatus::Failed, StatusFacts::Finished(&finished))),
        )
        .unwrap();
    }
    // Keep 2: the 3 oldest finished go; the queued one (the newest) is never a candidate.
    let day = Duration::from_secs(86_400);
    assert_eq!(s.expired(2, day).unwrap(), ids[..3].to_vec());
    // By age: everything finished is older than 0 s (a few ms later).
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(s.expired(100, Duration::ZERO).unwrap(), ids[..4].to_vec());
    s.delete_build(ids[0]).unwrap();
    assert!(s.get_build(ids[0]).unwrap().is_none());
    assert!(s.events_after(ids[0], 0, 10).unwrap().is_empty());
    assert!(matches!(
        s.delete_build(ids[0]),
        Err(StoreError::NoBuild(_))
    ));
}

pub fn sequences_are_contiguous_and_a_dropped_middle_replays_as_one_marker(s: &dyn Store) {
    let req = input("1.0.0");
    let Created::New(id) = s.create_build(&new_build(&req, None)).unwrap() else {
        panic!()
    };
    let stored = s
        .append(id, &(0..10).map(log).collect::<Vec<_>>(), None)
        .unwrap();
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (2..12).collect::<Vec<_>>()
    );
    s.drop_events(id, &[4, 5, 6], 30).unwrap();
    let all = s.events_after(id, 0, 100).unwrap();
    let kinds: Vec<(i64, &str)> = all.iter().map(|e| (e.seq, e.kind.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (1, "status"),
            (2, "log"),
            (3, "log"),
            (6, "dropped"),
            (7, "log"),
            (8, "log"),
            (9, "log"),
            (10, "log"),
            (11, "log")
        ]
    );
    let m: serde_json::Value = serde_json::from_str(&all[3].data).unwrap();
    assert_eq!((&m["from"], &m["to"]), (&4.into(), &6.into()));
    assert!(all[3].data.contains("3 log lines (30 bytes)"));
    // Resuming before or inside the gap: the marker says ids jump; after it: no repeat.
    for after in [3, 4, 5] {
        let first = &s.events_after(id, after, 100).unwrap()[0];
        assert_eq!(
            (first.seq, first.kind.as_str()),
            (6, "dropped"),
            "after {after}"
        );
    }
    assert_eq!(s.events_after(id, 6, 100).unwrap()[0].seq, 7);
    // The tail trimmed further: the gap grows and its marker moves to its new end.
    s.drop_events(id, &[7, 8], 20).unwrap();
    let again = s.events_after(id, 6, 100).unwrap();
    assert_eq!((again[0].seq, again[0].kind.as_str()), (8, "dropped"));
    assert_eq!(again[1].seq, 9);
}

/// Lists, filters, JSON queries on the request, deletion, interruption after a crash.
pub fn history_queries_and_interruption(s: &dyn Store) {
    assert_eq!(s.meta("instance", &|| "abc".into()).unwrap(), "abc");
    assert_eq!(s.meta("instance", &|| "other".into()).unwrap(), "abc");
    let v1 = input("1.0.0");
    let Created::New(a) = s.create_build(&new_build(&v1, None)).unwrap() else {
        panic!()
    };
    let done = Finished {
        error: None,
        ..Default::default()
    };
    s.append(
        a,
        &[],
        Some((BuildStatus::Succeeded, StatusFacts::Finished(&done))),
    )
    .unwrap();
    let repro = BuildInput {
        repro_of: Some(a),
        ..input("1.0.0")
    };
    let Created::New(b) = s.create_build(&new_build(&repro, None)).unwrap() else {
        panic!()
    };
    s.set_source(b, Some("abc123"), Some(false)).unwrap();
    assert_eq!(s.released_versions("tiny").unwrap(), ["1.0.0"]);
    let latest = s.latest_repro(a).unwrap().expect("the repro");
    assert_eq!(
        (latest.id, latest.commit.as_deref(), latest.dirty),
        (b, Some("abc123"), Some(false))
    );
    assert_eq!(latest.input().unwrap(), repro);
    let newest_first = s
        .list_builds(&ListFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        newest_first.iter().map(|r| r.id).collect::<Vec<_>>(),
        [b, a]
    );
    let succeeded = s
        .list_builds(&ListFilter {
            limit: 10,
            status: Some(BuildStatus::Succeeded),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(succeeded.len(), 1);
    let page = s
        .list_builds(&ListFilter {
            limit: 10,
            before: Some(b),
            project: Some("tiny".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), [a]);
    assert_eq!(s.queued().unwrap(), [b]);
    let mut counts = s.count_by_status().unwrap();
    counts.sort_by_key(|(st, _)| st.as_str());
    assert_eq!(
        counts,
        [(BuildStatus::Queued, 1), (BuildStatus::Succeeded, 1)]
    );
    // A crash left b queued: it is interrupted with its events, and its stream can end.
    let left = s
        .interrupt_unfinished("the service stopped", &|_| vec![log(9)])
        .unwrap();
    assert_eq!(left, [(b, format!("galley-test-{b}"))]);
    let row = s.get_build(b).unwrap().unwrap();
    assert_eq!(
        (row.status, row.error.as_deref()),
        (BuildStatus::Interrupted, Some("the service stopped"))
    );
    assert_eq!(
        s.last_event(b, "log").unwrap().as_deref(),
        Some("{\"line\":9}")
    );
    assert_eq!(s.stage_events(b).unwrap(), []);
    s.probe_write().unwrap();
    s.checkpoint().unwrap();
    assert_eq!(s.delete_build(a).unwrap(), None);
    assert!(s.get_build(a).unwrap().is_none());
    assert_eq!(s.expire_keys(Duration::ZERO).unwrap(), 0);
}
