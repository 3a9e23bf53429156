#!/usr/bin/env python3
"""What `synchronous = FULL` costs galley's store: the time of one small committed write (what
the API acknowledges: a queued build, a status, a batch of log lines) in WAL mode with NORMAL and
with FULL, on the file system of a directory (default: the benchmark directory, where a data dir
would live). Standard library only; nothing is asserted: the figures go to the results file.

    python3 benchmarks/sqlite-sync.py [--dir DIR] [--commits N] --out FILE.json
"""

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time


def run(path, mode, commits):
    if os.path.exists(path):
        os.remove(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={mode}")
    conn.execute("CREATE TABLE events (build_id INTEGER, seq INTEGER, kind TEXT, data TEXT, PRIMARY KEY (build_id, seq))")
    took = []
    for i in range(commits):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events VALUES (1, ?, 'log', ?)", (i, '{"line":"x"}' * 8))
        conn.execute("COMMIT")
        took.append(time.perf_counter() - t0)
    conn.close()
    took.sort()
    return {
        "commits": commits,
        "p50_ms": round(statistics.median(took) * 1000, 3),
        "p99_ms": round(took[int(0.99 * (len(took) - 1))] * 1000, 3),
        "total_s": round(sum(took), 3),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.environ.get("GALLEY_BENCH_DIR", "/var/tmp/galley-bench"))
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "sync.db")
        result = {"dir": a.dir, "NORMAL": run(path, "NORMAL", a.commits), "FULL": run(path, "FULL", a.commits)}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    md = a.out.rsplit(".", 1)[0] + ".md"
    with open(md, "w") as f:
        f.write(f"# SQLite WAL: one committed write with synchronous NORMAL and FULL ({a.commits} commits, {a.dir})\n\n")
        f.write("| synchronous | p50 ms | p99 ms | total s |\n|---|---|---|---|\n")
        for mode in ("NORMAL", "FULL"):
            r = result[mode]
            f.write(f"| {mode} | {r['p50_ms']} | {r['p99_ms']} | {r['total_s']} |\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
