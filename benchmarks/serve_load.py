#!/usr/bin/env python3
"""Load on `galley serve` (see serve-load.sh, which starts the service and calls this).

1. Followers: one build of the tiny fixture, N clients following its event stream from submission
   to its `end` event. Each client's event ids are compared with the stored stream read afterwards:
   events lost and repeated are counted.
2. Burst: M build submissions at once (distinct versions); latency of each POST and how many got
   202 or 429 (the queue holds max_queued).
3. History reads: GET /api/v1/builds?limit=50 from 10 threads while the burst's builds run.
4. The burst's builds are cancelled (and the cancel latency recorded), so the run ends quickly.

Standard library only. No timing is asserted: the figures go to the results file.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def request(base, method, path, body=None, token=None, timeout=60):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
    if method == "POST":
        # galley serve takes only JSON POSTs, with a body or not.
        headers["Content-Type"] = "application/json"
    t0 = time.perf_counter()
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    took = time.perf_counter() - t0
    conn.close()
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode(errors="replace")
    return resp.status, parsed, took


def follow(base, build_id, token, out, started_at):
    """Reads the event stream to its end; records ids, kinds and timings."""
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", f"/api/v1/builds/{build_id}/events", headers=headers)
    resp = conn.getresponse()
    ids, events, first, current = [], [], None, {}
    while True:
        line = resp.fp.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if line.startswith(":"):
            continue
        if line == "":
            if "id" in current:
                ids.append(current["id"])
                events.append((current.get("event", "message"), current.get("data", "")))
                if first is None:
                    first = time.perf_counter() - started_at
                if current.get("event") == "end":
                    break
            current = {}
            continue
        field, _, value = line.partition(":")
        current[field] = value.lstrip(" ")
        if field == "id":
            current["id"] = int(current["id"])
    conn.close()
    out.append({"ids": ids, "events": events, "first_event_s": first,
                "end_s": time.perf_counter() - started_at})


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def ms(x):
    return None if x is None else round(x * 1000, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    results = {"clients": a.clients, "burst": a.burst}

    # 1. Followers.
    status, accepted, post_s = request(a.url, "POST", "/api/v1/builds",
                                       {"variants": ["sqlite", "postgres"], "version": "1.0.0"}, a.token)
    assert status == 202, (status, accepted)
    build = accepted["id"]
    started = time.perf_counter()
    seen = []
    threads = [threading.Thread(target=follow, args=(a.url, build, a.token, seen, started)) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = []
    follow(a.url, build, a.token, stored, time.perf_counter())
    full = stored[0]["ids"]
    lost = sum(len(set(full) - set(s["ids"])) for s in seen)
    repeated = sum(len(s["ids"]) - len(set(s["ids"])) for s in seen)
    complete = sum(1 for s in seen if s["ids"] == full)
    _, record, _ = request(a.url, "GET", f"/api/v1/builds/{build}", token=a.token)
    results["followers"] = {
        "build": build,
        "build_status": record["status"],
        "events_stored": len(full),
        "clients_with_every_event_in_order": complete,
        "events_lost": lost,
        "events_repeated": repeated,
        "first_event_ms_p50": ms(pct([s["first_event_s"] for s in seen if s["first_event_s"] is not None], 50)),
        "end_ms_p50": ms(pct([s["end_s"] for s in seen], 50)),
        "end_ms_max": ms(max(s["end_s"] for s in seen)),
    }

    # 2. Burst of submissions, released together.
    barrier = threading.Barrier(a.burst)
    posts = []

    def submit(i):
        barrier.wait()
        s, body, took = request(a.url, "POST", "/api/v1/builds",
                                {"variants": ["sqlite"], "version": f"2.0.{i}"}, a.token)
        posts.append((s, body, took))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(a.burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = [p[2] for p in posts]
    results["burst_post"] = {
        "accepted_202": sum(1 for p in posts if p[0] == 202),
        "refused_429": sum(1 for p in posts if p[0] == 429),
        "other": sorted({p[0] for p in posts} - {202, 429}),
        "p50_ms": ms(pct(lat, 50)),
        "p99_ms": ms(pct(lat, 99)),
        "max_ms": ms(max(lat)),
    }

    # 3. History reads while those builds queue and run.
    gets = []

    def read_history():
        for _ in range(20):
            s, _, took = request(a.url, "GET", "/api/v1/builds?limit=50", token=a.token)
            gets.append((s, took))

    threads = [threading.Thread(target=read_history) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    glat = [g[1] for g in gets]
    results["get_builds"] = {
        "requests": len(gets),
        "non_200": sum(1 for g in gets if g[0] != 200),
        "p50_ms": ms(pct(glat, 50)),
        "p99_ms": ms(pct(glat, 99)),
        "max_ms": ms(max(glat)),
    }

    # 4. Cancel what the burst queued.
    ids = [p[1]["id"] for p in posts if p[0] == 202]
    cancels = []

    def cancel(i):
        s, body, took = request(a.url, "POST", f"/api/v1/builds/{i}/cancel", token=a.token)
        cancels.append((s, took, (body or {}).get("status") if isinstance(body, dict) else None))

    threads = [threading.Thread(target=cancel, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clat = [c[1] for c in cancels]
    results["cancel"] = {
        "requests": len(cancels),
        "statuses": sorted({c[0] for c in cancels}),
        "p50_ms": ms(pct(clat, 50)) if clat else None,
        "max_ms": ms(max(clat)) if clat else None,
    }
    _, metrics, _ = request(a.url, "GET", "/metrics", token=a.token)
    results["metrics_excerpt"] = [l for l in str(metrics).splitlines()
                                  if l.startswith(("galley_builds_total", "galley_cancels_total", "galley_queue_depth"))]
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    with open(a.out[: -len(".json")] + ".md" if a.out.endswith(".json") else a.out + ".md", "w") as f:
        f.write(markdown(results, a))
    print(json.dumps(results, indent=2))
    # Correctness, not speed: a lost or repeated event, or a failed read, fails the run.
    if fo_bad(results):
        raise SystemExit(f"serve_load: events lost or repeated, or reads failed: {fo_bad(results)}")


def fo_bad(r):
    fo, gb = r["followers"], r["get_builds"]
    bad = {k: v for k, v in (("events_lost", fo["events_lost"]), ("events_repeated", fo["events_repeated"]),
                             ("get_non_200", gb["non_200"])) if v}
    if fo["build_status"] != "succeeded":
        bad["build_status"] = fo["build_status"]
    return bad


def markdown(r, a):
    fo, bp, gb, c = r["followers"], r["burst_post"], r["get_builds"], r["cancel"]
    machine = open("/proc/cpuinfo").read().count("processor\t:")
    return f"""# galley serve under load ({time.strftime('%Y-%m-%d', time.gmtime())})

`bash benchmarks/serve-load.sh --clients {a.clients} --burst {a.burst}`: a release build of
galley serving the tiny fixture on loopback ({machine} cores; max_queued 20, max_running 2,
compile_slots 1, UPX on). Raw figures: the `.json` beside this file. Nothing here is asserted.

## {a.clients} clients following one build (2 variants) from submission to its end

| events stored | clients with every event, in order | events lost | events repeated | first event (p50) | end (p50 / max) |
|---|---|---|---|---|---|
| {fo['events_stored']} | {fo['clients_with_every_event_in_order']} of {a.clients} | {fo['events_lost']} | {fo['events_repeated']} | {fo['first_event_ms_p50']} ms | {fo['end_ms_p50']} / {fo['end_ms_max']} ms |

## A burst of {a.burst} submissions released together

| 202 | 429 (queue full, Retry-After) | other | POST p50 | POST p99 | max |
|---|---|---|---|---|---|
| {bp['accepted_202']} | {bp['refused_429']} | {bp['other'] or '-'} | {bp['p50_ms']} ms | {bp['p99_ms']} ms | {bp['max_ms']} ms |

## History reads during the burst's builds (10 threads x 20 `GET /api/v1/builds?limit=50`)

| requests | not 200 | p50 | p99 | max |
|---|---|---|---|---|
| {gb['requests']} | {gb['non_200']} | {gb['p50_ms']} ms | {gb['p99_ms']} ms | {gb['max_ms']} ms |

## Cancelling the burst's builds ({c['requests']} at once)

Statuses {c['statuses']}; p50 {c['p50_ms']} ms, max {c['max_ms']} ms (a queued build ends at once;
a running one answers when its processes are gone).
"""


if __name__ == "__main__":
    main()
