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
    claims_leases_and_workers(make("fleet").as_ref());
}

fn input(version: &str) -> BuildInput {
    BuildInput {
        project: "tiny".into(),
        variants: vec!["sqlite".into()],
        version: version.into(),
        push: false,
        git_ref: None,
        repro_of: None,
        retry_of: None,
        rebase_of: None,
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
    // A worker claimed b and crashed: when it starts again, b is interrupted with its events,
    // and its stream can end.
    let terms = ClaimTerms {
        worker: "w",
        lease: Duration::from_secs(60),
        sticky_delay: Duration::ZERO,
    };
    let (claimed, _) = s
        .claim(&terms, &|_| (Vec::new(), Started::default()))
        .unwrap()
        .expect("b is queued");
    assert_eq!(claimed.id, b);
    assert!(s.held_by("other").unwrap().is_empty());
    let left = s
        .interrupt_held("w", "the service stopped", &|_| vec![log(9)])
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

/// The fleet's queue: claims in order and never twice, sticky claims that wait for the worker
/// that built the project last, leases renewed by heartbeats and reaped when they run out,
/// cancels asked for another worker's build, the workers' view.
pub fn claims_leases_and_workers(s: &dyn Store) {
    let lease = Duration::from_secs(60);
    let terms = |worker| ClaimTerms {
        worker,
        lease,
        sticky_delay: Duration::from_secs(3600),
    };
    let start = |_: i64| (vec![log(1)], Started::default());
    assert!(s.heartbeat("a", "1.0", lease, true).unwrap().is_empty());
    assert!(s.heartbeat("b", "1.0", lease, true).unwrap().is_empty());
    assert!(
        s.claim(&terms("a"), &start).unwrap().is_none(),
        "nothing is queued"
    );
    let v = input("1.0.0");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let b = NewBuild {
            max_queued: 10,
            ..new_build(&v, None)
        };
        let Created::New(id) = s.create_build(&b).unwrap() else {
            panic!()
        };
        ids.push(id);
    }
    let (x, ev) = s.claim(&terms("a"), &start).unwrap().expect("the oldest");
    assert_eq!(
        (x.id, x.status, x.worker.as_deref(), ev[0].seq),
        (ids[0], BuildStatus::Running, Some("a"), 2)
    );
    // The project was built last by a, which is alive: b leaves it to a for the sticky delay,
    // then takes it.
    assert!(s.claim(&terms("b"), &start).unwrap().is_none());
    let quick = ClaimTerms {
        sticky_delay: Duration::ZERO,
        lease: Duration::from_millis(1),
        ..terms("b")
    };
    let (y, _) = s.claim(&quick, &start).unwrap().expect("past the delay");
    assert_eq!((y.id, y.worker.as_deref()), (ids[1], Some("b")));
    // A cancel asked elsewhere reaches a's next heartbeat; a queued build is not marked.
    s.request_cancel(x.id, "ops").unwrap();
    s.request_cancel(ids[2], "ops").unwrap();
    assert_eq!(
        s.heartbeat("a", "1.0", lease, false).unwrap(),
        [Held {
            id: x.id,
            cancel_requested: Some("ops".into())
        }]
    );
    assert_eq!(s.get_build(ids[2]).unwrap().unwrap().cancel_requested, None);
    let workers = s.workers().unwrap();
    assert_eq!(
        workers
            .iter()
            .map(|w| (w.name.as_str(), w.running.clone()))
            .collect::<Vec<_>>(),
        [("a", vec![x.id]), ("b", vec![y.id])]
    );
    // b's lease (1 ms) ran out and b never renewed it: reaped once, with the reason given.
    std::thread::sleep(Duration::from_millis(20));
    let reaped = s
        .reap(&|l| {
            let f = Finished {
                error: Some(format!("{} is gone", l.worker)),
                ..Default::default()
            };
            (vec![log(7)], f)
        })
        .unwrap();
    assert_eq!(
        reaped
            .iter()
            .map(|l| (l.id, l.worker.as_str(), l.last_seen.is_some()))
            .collect::<Vec<_>>(),
        [(y.id, "b", true)]
    );
    let row = s.get_build(y.id).unwrap().unwrap();
    assert_eq!(
        (row.status, row.error.as_deref()),
        (BuildStatus::Interrupted, Some("b is gone"))
    );
    assert!(s
        .reap(&|_| unreachable!("nothing lapsed"))
        .unwrap()
        .is_empty());
    // a finishes x: its project is warm on a.
    let done = Finished::default();
    s.append(
        x.id,
        &[],
        Some((BuildStatus::Succeeded, StatusFacts::Finished(&done))),
    )
    .unwrap();
    let a = s.workers().unwrap().remove(0);
    assert_eq!(
        (a.running.len(), a.warm.clone()),
        (0, vec!["tiny".to_string()])
    );
    assert!(a.last_seen >= a.started_at);
}
