#!/usr/bin/env python3
"""Runs the benchmark matrix, one flow run at a time, and records every run as a JSON line.

Called by benchmarks/run.sh (which installs, builds galley, makes the bases and starts the
registry). Standard library only.

Per run it records: wall time; the phases the flow's script marks (`@@phase NAME` lines, and
buildah's `STEP n/m:` lines, a step running `cargo build` counting as compile); the CPU time of
the flow's process tree (rusage of every descendant it reaps: it is a child subreaper, so
orphans are reaped too); the largest max RSS of a single process in the tree (ru_maxrss); the
peak sum of PSS over the tree, sampled every 0.5 s from /proc; the CPU other processes used
meanwhile (busy time from /proc/stat minus the tree's, the registry's and this process's own),
and the flow's disk use afterwards.
"""

import argparse
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# flow name -> (script, extra environment, description)
FLOWS = {
    "naive": ("multistage.sh", {}, "multi-stage, naive (COPY . . ; cargo build)"),
    "depcache": ("multistage.sh", {}, "multi-stage, dependencies in their own layer (dummy main.rs)"),
    "cachemount": ("multistage.sh", {}, "multi-stage, RUN --mount=type=cache (registry + target)"),
    "manual": ("manual.sh", {"BENCH_UPX": "1"}, "host: cargo zigbuild + strip + upx + buildah bud + buildah push"),
    "manual-noupx": ("manual.sh", {"BENCH_UPX": "0", "SHARE": "manual"}, "host: cargo zigbuild + strip + buildah bud + buildah push"),
    "galley": ("galley.sh", {"BENCH_UPX": "1"}, "galley build --push"),
    "galley-noupx": ("galley.sh", {"BENCH_UPX": "0", "SHARE": "galley"}, "galley build --push --no-compress"),
    "zigbuild": ("zigbuild.sh", {}, "bare cargo zigbuild (+ strip + upx timed apart): the floor"),
}
ALL_FLOWS = list(FLOWS)
# The -noupx flows compile exactly what their UPX siblings compile (same flags, same features), so
# they share the sibling's fixture copy, target dir, CARGO_HOME and zig cache: no second compile
# state to prime. They have no cold scenario of their own (the cold compile is the sibling's).
# Which caches a cold run empties, per flow (said in the results too).
COLD_EMPTIES = {
    "naive": "every image in the flow's buildah store but the two bases (so all --layers cache), the flow's registry repository",
    "depcache": "same as naive",
    "cachemount": "same as naive, plus the cache-mount directories (cargo registry, target)",
    "manual": "target dir, CARGO_HOME (crates downloaded again), zig cache, the flow's buildah store but the runtime base, registry repository",
    "manual-noupx": "same as manual",
    "galley": "target dir, CARGO_HOME (crates downloaded again), zig cache, galley's base blob cache (pulled again from the local registry), output layout, registry repository",
    "galley-noupx": "same as galley",
    "zigbuild": "target dir, CARGO_HOME (crates downloaded again), zig cache",
}
STEP_RE = re.compile(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (.*)")


def libc():
    return ctypes.CDLL("libc.so.6", use_errno=True)


def proc_stat_busy():
    """Busy and total jiffies of the whole machine."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already in user
    return total - idle, total


def pid_cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def du_bytes(paths):
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return 0
    out = subprocess.run(["du", "-scb", *paths], capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


class Sampler(threading.Thread):
    def __init__(self, me):
        super().__init__(daemon=True)
        self.me, self.peak_kb, self.stop = me, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            total = sum(pss_kb(p) for p in descendants(self.me))
            self.peak_kb = max(self.peak_kb, total)


def run_flow(flow, action, env, log_path, timeout):
    """Runs a flow script; returns the measurements of that one run."""
    script = os.path.join(REPO, "benchmarks", "flows", FLOWS[flow][0])
    me = os.getpid()
    reg_pid = int(env.get("REGISTRY_PID", "0") or 0)
    busy0, total0 = proc_stat_busy()
    reg0 = pid_cpu_ticks(reg_pid) if reg_pid else 0
    self0 = os.times()
    load0 = os.getloadavg()
    sampler = Sampler(me)
    sampler.start()
    t0 = time.monotonic()
    phases, cur, cur_t = {}, None, t0
    galley_report = None
    log = open(log_path, "w", buffering=1)
    proc = subprocess.Popen(["bash", script, action], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    for line in proc.stdout:
        now = time.monotonic()
        log.write(f"{now - t0:9.2f} {line}")
        line = line.rstrip("\n")
        new = None
        if line.startswith("@@phase "):
            new = line.split(None, 1)[1]
        elif line.startswith("@@galley-report "):
            galley_report = line.split(None, 1)[1]
        else:
            m = STEP_RE.match(line)
            if m and cur in ("build", "compile", "package"):
                new = "compile" if "cargo build" in m.group(1) else "package"
        if new is not None:
            if cur is not None:
                phases[cur] = phases.get(cur, 0.0) + now - cur_t
            cur = "package" if new == "build" else new
            cur_t = now
    _, status, ru = os.wait4(proc.pid, 0)
    end = time.monotonic()
    killer.cancel()
    if cur is not None:
        phases[cur] = phases.get(cur, 0.0) + end - cur_t
    # Orphans re-parented to us (we are a subreaper): reap them and add their usage.
    cpu = ru.ru_utime + ru.ru_stime
    maxrss = ru.ru_maxrss
    while True:
        try:
            pid, _, oru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        cpu += oru.ru_utime + oru.ru_stime
        maxrss = max(maxrss, oru.ru_maxrss)
    sampler.stop.set()
    sampler.join()
    wall = end - t0
    busy1, total1 = proc_stat_busy()
    self1 = os.times()
    reg_cpu = ((pid_cpu_ticks(reg_pid) - reg0) / CLK_TCK) if reg_pid else 0.0
    own_cpu = (self1.user - self0.user) + (self1.system - self0.system)
    machine_busy = (busy1 - busy0) / CLK_TCK
    other = max(0.0, machine_busy - cpu - reg_cpu - own_cpu)
    log.close()
    code = os.waitstatus_to_exitcode(status)
    rec = {
        "wall_s": round(wall, 3),
        "exit": code,
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "tree_cpu_s": round(cpu, 2),
        "registry_cpu_s": round(reg_cpu, 2),
        "harness_cpu_s": round(own_cpu, 2),
        "other_cpu_s": round(other, 2),
        "other_cores_avg": round(other / wall, 3) if wall > 0 else 0.0,
        "max_rss_single_process_mb": round(maxrss / 1024, 1),
        "peak_tree_pss_mb": round(sampler.peak_kb / 1024, 1),
        "loadavg_start": round(load0[0], 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "log": os.path.relpath(log_path, env["BENCH_DIR"]),
    }
    if galley_report and os.path.exists(galley_report):
        rec["galley"] = galley_stages(galley_report)
    return rec


def galley_stages(path):
    """Stage times summed over the variants (packaging of one variant overlaps the next compile)."""
    with open(path) as f:
        report = json.load(f)
    stages, sizes, push = {}, {}, {}
    for v in report.get("variants", []):
        plat = (v.get("platforms") or [{}])[0]
        for st in plat.get("stages", []):
            stages[st["stage"]] = stages.get(st["stage"], 0) + st["ms"]
        sizes[v["variant"]] = plat.get("sizes", {})
        if v.get("push"):
            push[v["variant"]] = {"ms": v["push"].get("ms"), "blobs": v["push"].get("blobs")}
        if v.get("status") != "ok" and v.get("status") != "succeeded":
            push.setdefault("status", {})[v["variant"]] = v.get("status")
    sccache = {}
    for v in report.get("variants", []):
        for p in v.get("platforms") or []:
            for k, n in (p.get("sccache") or {}).items():
                if isinstance(n, int) and not isinstance(n, bool):
                    sccache[k] = sccache.get(k, 0) + n
    return {"stages_ms": stages, "total_ms": report.get("total_ms"), "sizes": sizes, "push": push,
            "toolchain": report.get("toolchain"), "succeeded": report.get("succeeded"),
            "cache_uses": cache_uses(report), "remote_cache": report.get("remote_cache"),
            "sccache": sccache or None}


def cache_uses(report):
    """How many stages each tier answered (cached, remote) or ran, over every variant."""
    out = {}
    for v in report.get("variants", []):
        for p in v.get("platforms") or []:
            for st in p.get("stages", []):
                if st.get("cache"):
                    out[st["cache"]] = out.get(st["cache"], 0) + 1
    return out


def flow_disk(flow, fdir):
    # The flow's state beyond the bases; base sizes are measured once and subtracted.
    return du_bytes([os.path.join(fdir, d) for d in
                     ("storage", "tmp", "cargo-home", "zig-cache", "target", "galley-cache", "out",
                      "ctx", "bin", "project/target")])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", default=",".join(ALL_FLOWS))
    ap.add_argument("--variants", default="sqlite,postgres,mysql", help="variants of the warm scenarios")
    ap.add_argument("--cold-variants", default="sqlite,postgres,mysql")
    ap.add_argument("--scenarios", default="change,nochange,cold",
                    help="change, nochange, cold, coldproj (cold project, warm toolchain: host flows only), "
                         "ephemeral (a fresh runner with the shared tiers warm: galley flows only)")
    ap.add_argument("--cold-flows", default=None,
                    help="flows of the cold scenario, each optionally FLOW:REPS (default: --flows, --reps each)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--first-rep", type=int, default=1,
                    help="number of the first repetition (to add repetitions to an earlier run)")
    ap.add_argument("--out", required=True, help="JSON lines file (appended)")
    ap.add_argument("--timeout", type=int, default=3600, help="per run, seconds")
    ap.add_argument("--deadline", type=float, default=0, help="epoch seconds: start no run after it")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when a build failed on both attempts (the CI smoke test)")
    args = ap.parse_args()

    libc().prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    bench_dir = os.environ["BENCH_DIR"]
    flows = [f for f in args.flows.split(",") if f]
    cold_reps = {}
    for item in (args.cold_flows or args.flows).split(","):
        if item:
            name, _, n = item.partition(":")
            if not FLOWS.get(name, ("", {}))[1].get("SHARE"):
                cold_reps[name] = int(n) if n else args.reps
    cold_flows = list(cold_reps)
    scenarios = args.scenarios.split(",")
    for f in flows + cold_flows:
        if f not in FLOWS:
            sys.exit(f"bench: unknown flow {f}")
    os.makedirs(os.path.join(bench_dir, "logs"), exist_ok=True)
    out = open(args.out, "a")
    edits = {}
    baseline = {}

    def env_for(flow, variants):
        fdir = os.path.join(bench_dir, "flows", flow)
        share = FLOWS[flow][1].get("SHARE")
        cdir = os.path.join(bench_dir, "flows", share) if share else fdir
        env = dict(os.environ, FLOW=flow, FLOW_DIR=fdir, COMPILE_DIR=cdir, REPO_ROOT=REPO,
                   PROJECT=os.path.join(cdir, "project"), VARIANTS=variants, VERSION="1.0.0")
        env.update(FLOWS[flow][1])
        return env, fdir

    def fresh_project(fdir):
        """A copy of the fixture, never the committed one; edits go to the copy."""
        proj = os.path.join(fdir, "project")
        keep_target = os.path.join(proj, "target")
        os.makedirs(proj, exist_ok=True)
        for name in os.listdir(proj):
            if name != "target":
                p = os.path.join(proj, name)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
        src = os.path.join(REPO, "fixtures", "authd")
        for name in os.listdir(src):
            if name == "target":
                continue
            s = os.path.join(src, name)
            (shutil.copytree if os.path.isdir(s) else shutil.copy2)(s, os.path.join(proj, name))
        with open(os.path.join(proj, ".dockerignore"), "w") as f:
            f.write("target\n")
        del keep_target

    # Every edit of every invocation is new: content-addressed caches (buildah's layers, galley's
    # stage cache) would otherwise answer a "change" seen in an earlier invocation.
    invocation = f"{time.time_ns():x}"

    def edit(flow, n):
        """The one-line source change, the same for every flow: a string in main.rs."""
        env, _ = env_for(flow, args.variants)
        path = os.path.join(env["PROJECT"], "src", "main.rs")
        with open(path) as f:
            text = f.read()
        new = re.sub(r'"usage: authd \[--version\][^"]*"', f'"usage: authd [--version] (edit {n}.{invocation})"', text, count=1)
        if new == text:
            sys.exit("bench: the edit did not apply to main.rs")
        with open(path, "w") as f:
            f.write(new)

    def action(flow, act, variants, tag):
        env, fdir = env_for(flow, variants)
        log = os.path.join(bench_dir, "logs", f"{time.strftime('%H%M%S')}-{flow}-{tag}.log")
        rec = run_flow(flow, act, env, log, args.timeout)
        if rec["exit"] != 0:
            print(f"bench: {flow} {act} ({tag}) failed with {rec['exit']}; log {log}", file=sys.stderr)
            with open(log) as f:
                sys.stderr.write("".join(f.readlines()[-30:]))
        return rec

    def record(flow, scenario, rep, variants, rec):
        _, fdir = env_for(flow, variants)
        rec.update(flow=flow, scenario=scenario, rep=rep, variants=variants,
                   disk_bytes=flow_disk(flow, fdir) - baseline.get(flow, 0),
                   time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        out.write(json.dumps(rec) + "\n")
        out.flush()
        flag = " CONTENDED" if rec["other_cores_avg"] > 0.25 else ""
        if rec["exit"] != 0:
            flag += f" FAILED ({rec['exit']})"
        print(f"bench: {flow:13} {scenario:8} rep {rep} [{variants}] {rec['wall_s']:8.1f} s "
              f"(others used {rec['other_cores_avg']:.2f} cores){flag}", file=sys.stderr)

    failed = []

    def late():
        return args.deadline and time.time() > args.deadline

    # Prepare every flow: bases into its own store (not timed), a fresh fixture copy.
    for flow in dict.fromkeys(flows + cold_flows):
        env, fdir = env_for(flow, args.variants)
        os.makedirs(fdir, exist_ok=True)
        if not FLOWS[flow][1].get("SHARE"):
            fresh_project(fdir)
        r = action(flow, "prepare", args.variants, "prepare")
        if r["exit"] != 0:
            sys.exit(1)
        # What the bases take in the flow's store, subtracted from its disk figures.
        bfile = os.path.join(fdir, "baseline-bytes")
        if not os.path.exists(bfile):
            with open(bfile, "w") as f:
                f.write(str(du_bytes([os.path.join(fdir, "storage")])))
        baseline[flow] = int(open(bfile).read())

    warm = [s for s in scenarios if s not in ("cold", "coldproj", "ephemeral")]
    if warm:
        # Prime: one untimed build, so the warm scenarios start from a built state.
        for flow in flows:
            if late():
                break
            r = action(flow, "build", args.variants, "prime")
            print(f"bench: {flow:13} prime    [{args.variants}] {r['wall_s']:8.1f} s (not counted)", file=sys.stderr)
            if r["exit"] != 0:
                sys.exit(1)
        for rep in range(args.first_rep, args.first_rep + args.reps):
            for flow in flows:
                for scenario in warm:
                    if late():
                        continue
                    if scenario == "change":
                        edits[flow] = edits.get(flow, 0) + 1
                        edit(flow, f"{flow}.{rep}.{edits[flow]}")
                    # A failed build (buildah has transient failures) is recorded and tried once more.
                    for attempt in (1, 2):
                        r = action(flow, "build", args.variants, f"{scenario}{rep}")
                        record(flow, scenario, rep, args.variants, r)
                        if r["exit"] == 0:
                            break
                    else:
                        failed.append(f"{flow} {scenario} rep {rep}: see {r['log']}")
    # ephemeral: a fresh runner per build (galley.sh runner-prepare: an empty target dir, local
    # stage cache and CARGO_HOME, zig's cache with the toolchain alone), the shared tiers (the
    # registry's stage cache, sccache on Redis) warm from an earlier build of another commit (the
    # seed, not counted). Then the one-line change on a fresh runner ("ephemeral"), and the same
    # commit again on another fresh runner, every stage a remote hit ("ephemeral-same").
    if "ephemeral" in scenarios:
        for rep in range(args.first_rep, args.first_rep + args.reps):
            for flow in [f for f in flows if FLOWS[f][0] == "galley.sh"]:
                if late():
                    continue
                for tag, scenario in (("seed", None), ("edit", "ephemeral"), ("same", "ephemeral-same")):
                    if tag != "same":
                        edits[flow] = edits.get(flow, 0) + 1
                        edit(flow, f"{flow}.{rep}.{edits[flow]}")
                    p = action(flow, "runner-prepare", args.variants, f"runner-{tag}{rep}")
                    if p["exit"] != 0:
                        failed.append(f"{flow} runner-prepare rep {rep}: see {p['log']}")
                        break
                    r = action(flow, "runner-build", args.variants, f"ephemeral-{tag}{rep}")
                    if scenario is None:
                        print(f"bench: {flow:13} seed     [{args.variants}] {r['wall_s']:8.1f} s (not counted)", file=sys.stderr)
                        if r["exit"] != 0:
                            failed.append(f"{flow} ephemeral seed rep {rep}: see {r['log']}")
                            break
                        continue
                    record(flow, scenario, rep, args.variants, r)
                    if r["exit"] != 0:
                        failed.append(f"{flow} {scenario} rep {rep}: see {r['log']}")
    # cold: every cache of the flow emptied. coldproj: the same, then the toolchain warmed (zig's
    # musl and compiler-rt built by linking a dependency-free crate), as a multi-stage builder
    # image arrives with its libc prebuilt; host flows only (a multi-stage flow's cold run
    # already keeps its builder image).
    for scenario in [s for s in ("cold", "coldproj") if s in scenarios]:
        keep = {"KEEP_TOOLCHAIN": "1"} if scenario == "coldproj" else {}
        these = [f for f in cold_flows if scenario == "cold" or FLOWS[f][0] != "multistage.sh"]
        for i in range(max((cold_reps[f] for f in these), default=0)):
            rep = args.first_rep + i
            for flow in these:
                if i >= cold_reps[flow] or late():
                    continue
                for attempt in (1, 2):
                    os.environ.update(keep)
                    c = action(flow, "clean", args.cold_variants, f"clean-{scenario}{rep}")
                    for k in keep:
                        os.environ.pop(k, None)
                    if c["exit"] != 0:
                        # Not emptied, so not cold: recorded as failed, never timed as cold.
                        c["note"] = "clean failed: no cold build run"
                        record(flow, scenario, rep, args.cold_variants, c)
                        break
                    r = action(flow, "build", args.cold_variants, f"{scenario}{rep}")
                    record(flow, scenario, rep, args.cold_variants, r)
                    if r["exit"] == 0:
                        break
                else:
                    failed.append(f"{flow} {scenario} rep {rep}: see {r['log']}")
    out.close()
    if failed:
        print("bench: builds that failed twice:\n  " + "\n  ".join(failed), file=sys.stderr)
        if args.strict:
            sys.exit(1)


if __name__ == "__main__":
    main()
