"""The fleet benchmark's client (started by benchmarks/fleet.sh): claim latency, SSE fan-out on
the instance that does not run the build, and a queue drained by two workers. Writes JSON and a
Markdown summary beside it; asserts nothing about time, but exits 1 when an event was lost or
repeated or a build was claimed twice (those are defects, not figures)."""

import argparse
import json
import sys
import threading
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from serve_load import follow, ms, pct, request  # noqa: E402


def wait_final(base, token, build_id, limit=900):
    t0 = time.perf_counter()
    while True:
        status, rec, _ = request(base, "GET", f"/api/v1/builds/{build_id}", token=token)
        if status == 200 and rec["status"] not in ("queued", "running"):
            return rec
        if time.perf_counter() - t0 > limit:
            raise SystemExit(f"build {build_id} did not end in {limit}s: {rec}")
        time.sleep(0.1)


def submit(base, token, project, version):
    status, body, took = request(base, "POST", "/api/v1/builds", token=token,
                                 body={"project": project, "variants": ["sqlite"], "version": version})
    if status != 202:
        raise SystemExit(f"submit: {status} {body}")
    return body["id"], took


def events(base, token, build_id):
    out = []
    follow(base, build_id, token, out, time.perf_counter())
    return out[0]["ids"]


def running_count(base, token, build_id):
    """How many `running` status events the build has (1 = claimed once)."""
    out = []
    follow(base, build_id, token, out, time.perf_counter())
    return sum(1 for kind, data in out[0]["events"]
               if kind == "status" and json.loads(data or "{}").get("status") == "running")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--followers", type=int, default=100)
    ap.add_argument("--drain", type=int, default=200)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    urls = {"a": a.a, "b": a.b}
    r = {"followers": a.followers, "drain": a.drain}
    defects = []

    # Warm both workers (their target dirs and the shared stage cache), then claim latency: one
    # build at a time on an idle fleet, the wait between queued and running as recorded.
    for n, base in enumerate([a.a, a.b]):
        i, _ = submit(base, a.token, "tiny", f"1.0.{n}")
        wait_final(base, a.token, i)
    waits = []
    for n in range(20):
        base = [a.a, a.b][n % 2]
        i, _ = submit(base, a.token, "tiny", f"2.0.{n}")
        rec = wait_final(base, a.token, i)
        waits.append(rec["queue_wait_ms"] / 1000)
    r["claim_wait_p50_ms"] = ms(pct(waits, 50))
    r["claim_wait_p95_ms"] = ms(pct(waits, 95))
    r["claim_wait_max_ms"] = ms(max(waits))

    # Fan-out: followers on the instance that does not run the build.
    i, _ = submit(a.a, a.token, "chatty", "3.0.0")
    while True:
        _, rec, _ = request(a.a, "GET", f"/api/v1/builds/{i}", token=a.token)
        if rec.get("worker"):
            break
        time.sleep(0.05)
    builder = rec["worker"]
    other = urls["b" if builder == "a" else "a"]
    got, threads = [], []
    t0 = time.perf_counter()
    for _ in range(a.followers):
        t = threading.Thread(target=follow, args=(other, i, a.token, got, t0))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    truth = events(urls[builder], a.token, i)
    lost = sum(len(set(truth) - set(g["ids"])) for g in got)
    repeated = sum(len(g["ids"]) - len(set(g["ids"])) for g in got)
    out_of_order = sum(1 for g in got if g["ids"] != sorted(g["ids"]))
    r["fanout"] = {
        "builder": builder, "events": len(truth), "followers_done": len(got),
        "lost": lost, "repeated": repeated, "out_of_order": out_of_order,
        "end_after_s_p50": round(pct([g["end_s"] for g in got], 50), 2),
    }
    if lost or repeated or out_of_order or len(got) != a.followers:
        defects.append(f"fan-out: {r['fanout']}")

    # Drain: submit the queue as fast as the API takes it, alternating instances.
    t0 = time.perf_counter()
    ids = []
    for n in range(a.drain):
        base = [a.a, a.b][n % 2]
        i, _ = submit(base, a.token, "tiny", f"5.0.{n}")
        ids.append(i)
    submitted = time.perf_counter() - t0
    by_worker, twice = {}, []
    for i in ids:
        rec = wait_final(a.a, a.token, i)
        by_worker[rec.get("worker")] = by_worker.get(rec.get("worker"), 0) + 1
        if rec["status"] != "succeeded":
            defects.append(f"build {i}: {rec['status']} {rec.get('error')}")
    drained = time.perf_counter() - t0
    for i in ids:
        if running_count(a.b, a.token, i) != 1:
            twice.append(i)
    r["drain_s"] = round(drained, 1)
    r["drain_submit_s"] = round(submitted, 1)
    r["drain_builds_per_s"] = round(a.drain / drained, 2)
    r["drain_by_worker"] = by_worker
    r["claimed_twice"] = twice
    if twice:
        defects.append(f"claimed twice: {twice}")
    r["defects"] = defects

    with open(a.out, "w") as f:
        json.dump(r, f, indent=2)
    md = a.out.rsplit(".", 1)[0] + ".md"
    with open(md, "w") as f:
        f.write(f"""# The fleet: two workers on one PostgreSQL ({time.strftime('%Y-%m-%d')})

`bash benchmarks/fleet.sh` on this machine (2 cores): two release `galley serve` workers, one
PostgreSQL (fsync off), the tiny fixture through a warm shared stage cache.

| measure | value |
|---|---|
| claim wait, idle fleet (queued → running, 20 builds) | p50 {r['claim_wait_p50_ms']} ms, p95 {r['claim_wait_p95_ms']} ms, max {r['claim_wait_max_ms']} ms |
| SSE fan-out: {a.followers} followers on the instance that does not build | {r['fanout']['events']} events each; lost {lost}, repeated {repeated}, out of order {out_of_order}; end reached after {r['fanout']['end_after_s_p50']} s (p50) |
| {a.drain} queued builds drained by two workers | {r['drain_s']} s ({r['drain_builds_per_s']} builds/s; submitted in {r['drain_submit_s']} s); by worker {by_worker}; claimed twice: {len(twice)} |

Defects: {defects or 'none'}.
""")
    print(json.dumps(r, indent=2))
    sys.exit(1 if defects else 0)


if __name__ == "__main__":
    main()
