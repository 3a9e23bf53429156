#!/usr/bin/env python3
"""UPX as data: pack each authd variant's stripped binary at several levels and measure what
each costs and gives. Called by upx-levels.sh, which builds the binaries first.

Per binary and level: pack time (wall, median of 3), packed size, the layer size (gzip -6 of
the binary, what galley's layer adds), and for the packed binary against the unpacked one: the
start-up time of `--version` (median of 20 runs) and its peak resident memory (GNU time's %M,
median of 5). Standard library only; nothing is asserted.
"""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import time

LEVELS = [
    ("--best --lzma", ["--best", "--lzma"]),
    ("--lzma", ["--lzma"]),
    ("-9", ["-9"]),
    ("--ultra-brute", ["--ultra-brute"]),
]


def run_time(argv):
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def startup(binary, n=20):
    return statistics.median(run_time([binary, "--version"]) for _ in range(n))


def rss_kib(binary, n=5):
    vals = []
    for _ in range(n):
        r = subprocess.run(["/usr/bin/time", "-f", "%M", binary, "--version"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        vals.append(int(r.stderr.strip().splitlines()[-1]))
    return statistics.median(vals)


def layer_size(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=6, mtime=0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binaries", nargs="+", required=True, help="VARIANT=PATH of stripped binaries")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True, help="results .json (a .md is written beside it)")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    upx_version = subprocess.run(["upx", "--version"], check=True, capture_output=True, text=True).stdout.splitlines()[0]
    rows = []
    for spec in a.binaries:
        variant, path = spec.split("=", 1)
        base = {"variant": variant, "level": "unpacked", "size": os.path.getsize(path),
                "layer": layer_size(path), "pack_s": 0.0, "startup_ms": startup(path) * 1000,
                "rss_kib": rss_kib(path)}
        rows.append(base)
        print(f"upx-levels: {variant} unpacked {base['size']} B, start {base['startup_ms']:.1f} ms", flush=True)
        for name, flags in LEVELS:
            out = os.path.join(a.work, f"{variant}.{name.strip('-').replace(' --', '-').replace(' ', '')}")
            times = []
            for _ in range(a.reps if name != "--ultra-brute" else 1):
                if os.path.exists(out):
                    os.remove(out)
                times.append(run_time(["upx", *flags, "-q", "--no-progress", "-o", out, path]))
            subprocess.run(["upx", "-t", "-q", out], check=True, stdout=subprocess.DEVNULL)
            row = {"variant": variant, "level": name, "size": os.path.getsize(out), "layer": layer_size(out),
                   "pack_s": statistics.median(times), "startup_ms": startup(out) * 1000, "rss_kib": rss_kib(out)}
            rows.append(row)
            print(f"upx-levels: {variant} {name}: {row['size']} B in {row['pack_s']:.1f} s, "
                  f"start {row['startup_ms']:.1f} ms, rss {row['rss_kib']} KiB", flush=True)
    data = {"upx": upx_version, "machine_cores": os.cpu_count(), "rows": rows}
    with open(a.out, "w") as f:
        json.dump(data, f, indent=2)
    md = [f"# UPX levels on the authd binaries ({time.strftime('%Y-%m-%d', time.gmtime())})", "",
          f"`bash benchmarks/upx-levels.sh`; {upx_version}; {os.cpu_count()} cores. Per variant, the stripped",
          "binary unpacked and packed at each level: pack time (median of 3; `--ultra-brute` once), size,",
          "the layer galley would push (gzip -6 of the binary), and the binary's start-up (`--version`,",
          "median of 20 runs) and peak resident memory (GNU time %M, median of 5).", "",
          "| variant | level | pack s | binary KiB | layer KiB | start-up ms | peak RSS KiB |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['variant']} | {r['level']} | {r['pack_s']:.2f} | {r['size'] / 1024:.0f} | "
                  f"{r['layer'] / 1024:.0f} | {r['startup_ms']:.1f} | {r['rss_kib']} |")
    with open(a.out[:-5] + ".md", "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
