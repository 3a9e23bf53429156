#!/usr/bin/env python3
"""Summarises the runs into OUT.json (everything: machine, runs, summary, sizes), OUT.md (the
tables) and OUT.svg (the chart, drawn here: no plotting package needed).

    report.py --runs RUNS.jsonl --sizes SIZES.json --machine MACHINE.json --out PREFIX [--args "..."] [--quick 0|1]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import COLD_EMPTIES, FLOWS  # noqa: E402

CONTENDED = 0.25  # average cores used by other processes during a run (of nproc)
SCEN_ORDER = ["cold", "coldproj", "change", "nochange", "ephemeral", "ephemeral-same"]
SCEN_NAME = {"cold": "cold", "coldproj": "cold project, warm toolchain", "change": "one-line change",
             "nochange": "no change", "ephemeral": "ephemeral runner, one-line change",
             "ephemeral-same": "ephemeral runner, same commit"}
FLOW_ORDER = list(FLOWS)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_s(x):
    if x is None:
        return "-"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def mib(b):
    return "-" if b is None else f"{b / (1 << 20):.1f}"


def phase_split(r):
    """compile / package / push seconds of one run, as far as the flow allows."""
    if r["flow"].startswith("galley") and "galley" in r:
        st = r["galley"]["stages_ms"]
        comp = st.get("compile", 0) / 1000
        pkg = sum(st.get(k, 0) for k in ("verify", "strip", "compress", "layer", "assemble", "attest")) / 1000
        push = st.get("push", 0) / 1000
        if not push:
            push = sum((p.get("ms") or 0) for k, p in r["galley"]["push"].items() if k != "status") / 1000
        return comp, pkg, push
    p = r["phases_s"]
    if r["flow"] == "zigbuild":
        return p.get("compile"), p.get("compress"), None
    return p.get("compile"), p.get("package"), p.get("push")


def summarise(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["flow"], r["scenario"], r["variants"]), []).append(r)
    out = []
    for (flow, scen, variants), all_rs in groups.items():
        # Failed runs are counted, never timed.
        rs = [r for r in all_rs if r["exit"] == 0]
        if not rs:
            out.append({"flow": flow, "scenario": scen, "variants": variants, "n": 0,
                        "failed": len(all_rs), "wall_median_s": None})
            continue
        walls = [r["wall_s"] for r in rs]
        splits = [phase_split(r) for r in rs]
        out.append({
            "flow": flow, "scenario": scen, "variants": variants, "n": len(rs),
            "failed": len(all_rs) - len(rs),
            "wall_median_s": med(walls), "wall_min_s": min(walls), "wall_max_s": max(walls),
            "compile_median_s": med([s[0] for s in splits]),
            "package_median_s": med([s[1] for s in splits]),
            "push_median_s": med([s[2] for s in splits]),
            "tree_cpu_median_s": med([r["tree_cpu_s"] for r in rs]),
            "peak_tree_pss_max_mb": max(r["peak_tree_pss_mb"] for r in rs),
            "max_rss_single_process_max_mb": max(r["max_rss_single_process_mb"] for r in rs),
            "disk_median_bytes": med([r["disk_bytes"] for r in rs]),
            "other_cores_median": med([r["other_cores_avg"] for r in rs]),
            "contended_runs": sum(1 for r in rs if r["other_cores_avg"] > CONTENDED),
        })
    key = lambda s: (SCEN_ORDER.index(s["scenario"]), FLOW_ORDER.index(s["flow"]), s["variants"])
    return sorted(out, key=key)


def ratios(summary):
    """galley over the floor: bare cargo zigbuild (+ strip + upx when compression is on)."""
    by = {(s["flow"], s["scenario"], s["variants"]): s for s in summary}
    out = []
    for (flow, scen, variants), s in by.items():
        if flow not in ("galley", "galley-noupx"):
            continue
        z = by.get(("zigbuild", scen, variants))
        if not z or not z["n"] or not s["n"]:
            continue
        floor = z["wall_median_s"] if flow == "galley" else z["compile_median_s"]
        if floor:
            out.append({"flow": flow, "scenario": scen, "variants": variants,
                        "galley_s": s["wall_median_s"], "floor_s": floor,
                        "floor": "cargo zigbuild + strip + upx" if flow == "galley" else "cargo zigbuild",
                        "ratio": s["wall_median_s"] / floor})
    return sorted(out, key=lambda r: (SCEN_ORDER.index(r["scenario"]), r["flow"]))


def svg_chart(summary, path, title):
    """One panel per scenario and set of variants, three panels a row."""
    panels = sorted({(x["scenario"], x["variants"]) for x in summary if x["n"]},
                    key=lambda p: (SCEN_ORDER.index(p[0]), p[1].count(","), p[1]))
    flows = [f for f in FLOW_ORDER if any(x["flow"] == f for x in summary)]
    colors = {"naive": "#b2182b", "depcache": "#ef8a62", "cachemount": "#fddbc7",
              "manual": "#67a9cf", "manual-noupx": "#d1e5f0", "galley": "#1a9850",
              "galley-noupx": "#91cf60", "zigbuild": "#777777"}
    pw, bar, gap, left, top, cols = 260, 14, 4, 100, 50, 3
    ph = len(flows) * (bar + gap) + 50
    nrows = (len(panels) + cols - 1) // cols
    width = left + cols * (pw + 60)
    height = top + nrows * ph + 20
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>',
         '<text x="10" y="36" fill="#555">median wall time in seconds (bar), min to max '
         '(whisker); each panel has its own scale; hatched: at least one run contended</text>',
         '<defs><pattern id="h" width="6" height="6" patternUnits="userSpaceOnUse" '
         'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#000" '
         'stroke-opacity="0.35" stroke-width="2"/></pattern></defs>']
    for i, (sc, variants) in enumerate(panels):
        x0 = left + (i % cols) * (pw + 60)
        y0 = top + (i // cols) * ph
        rows = {x["flow"]: x for x in summary
                if x["scenario"] == sc and x["variants"] == variants and x["n"]}
        vmax = max(x["wall_max_s"] for x in rows.values()) * 1.1 or 1
        o.append(f'<text x="{x0}" y="{y0 + 12}" font-weight="bold">{SCEN_NAME[sc]} [{variants}]</text>')
        y = y0 + 20
        for f in flows:
            if i % cols == 0:
                o.append(f'<text x="{left - 6}" y="{y + bar - 3}" text-anchor="end">{f}</text>')
            s = rows.get(f)
            if s:
                w = pw * s["wall_median_s"] / vmax
                o.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colors[f]}" '
                         f'stroke="#333" stroke-width="0.5"/>')
                if s["contended_runs"]:
                    o.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{bar}" fill="url(#h)"/>')
                a, b = pw * s["wall_min_s"] / vmax, pw * s["wall_max_s"] / vmax
                cy = y + bar / 2
                o.append(f'<line x1="{x0 + a:.1f}" y1="{cy}" x2="{x0 + b:.1f}" y2="{cy}" stroke="#000"/>')
                for v in (a, b):
                    o.append(f'<line x1="{x0 + v:.1f}" y1="{cy - 4}" x2="{x0 + v:.1f}" y2="{cy + 4}" stroke="#000"/>')
                o.append(f'<text x="{x0 + b + 4:.1f}" y="{y + bar - 3}">{fmt_s(s["wall_median_s"])}</text>')
            y += bar + gap
        o.append(f'<line x1="{x0}" y1="{y0 + 18}" x2="{x0}" y2="{y}" stroke="#333"/>')
        for t in range(5):
            v = vmax / 1.1 * t / 4
            xx = x0 + pw * v / vmax
            o.append(f'<text x="{xx:.1f}" y="{y + 12}" text-anchor="middle" fill="#555">{fmt_s(v)}</text>')
    o.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(o) + "\n")


def markdown(data, name):
    m, summary, sizes = data["machine"], data["summary"], data["sizes"]
    L = [f"# galley benchmark: {data['date']}{' (quick smoke run)' if data['quick'] else ''}", ""]
    how = (data["args"].strip("()") if data["args"].startswith("(")
           else "`bash benchmarks/run.sh " + data["args"] + "`")
    L += ["Measured by " + how + "; method and caveats in "
          "[benchmarks/README.md](../README.md). Raw runs, machine and sizes: "
          f"[{name}.json]({name}.json). Chart: [{name}.svg]({name}.svg).", ""]
    L += ["## Machine", "",
          f"{m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, kernel {m['kernel']}, {m['os']}. "
          f"{m['rustc']}; {m['cargo']}; zig {m['zig']}; {m['cargo_zigbuild']}; {m['upx']}; "
          f"{m['buildah']} (storage driver: {m['buildah_storage'].get('driver')}); {m['skopeo']}; "
          f"docker-registry {m['docker_registry']}; {m['galley']}.", ""]
    if data.get("notes"):
        L += ["## Notes on this run", ""] + [f"- {n}" for n in data["notes"]] + [""]
    ncont = sum(1 for r in data["runs"] if r["other_cores_avg"] > CONTENDED)
    L += ["## Times", "",
          f"Seconds, median over the repetitions (min to max). A run is **contended** when other "
          f"processes used more than {CONTENDED} of the machine's {m['nproc']} cores on average "
          f"meanwhile; {ncont} of {len(data['runs'])} runs were. compile / package / push: the "
          "flow's phases (multi-stage: the `cargo build` steps / every other step / `buildah push`; "
          "galley: its stage times summed over the variants, where packaging overlaps the next "
          "compile; zigbuild: `cargo zigbuild` / strip + upx). CPU: user + system seconds of the "
          "flow's process tree. PSS: peak of the tree's summed PSS, sampled every 0.5 s; RSS: the "
          "largest single process (rusage). Disk: what the flow keeps afterwards, bases excluded.", "",
          "| scenario | flow | variants | n | wall s | compile | package | push | CPU s | peak PSS MiB | max RSS MiB | disk MiB | contended | other cores |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        fail = f" (+{s['failed']} failed)" if s["failed"] else ""
        if not s["n"]:
            L.append(f"| {SCEN_NAME[s['scenario']]} | {s['flow']} | {s['variants']} | 0{fail} | every run failed |||||||||")
            continue
        L.append(f"| {SCEN_NAME[s['scenario']]} | {s['flow']} | {s['variants']} | {s['n']}{fail} | "
                 f"**{fmt_s(s['wall_median_s'])}** ({fmt_s(s['wall_min_s'])}-{fmt_s(s['wall_max_s'])}) | "
                 f"{fmt_s(s['compile_median_s'])} | {fmt_s(s['package_median_s'])} | {fmt_s(s['push_median_s'])} | "
                 f"{fmt_s(s['tree_cpu_median_s'])} | {s['peak_tree_pss_max_mb']:.0f} | "
                 f"{s['max_rss_single_process_max_mb']:.0f} | {mib(s['disk_median_bytes'])} | "
                 f"{s['contended_runs']}/{s['n']} | {s['other_cores_median']:.2f} |")
    L += ["", "## Who wins", "",
          "Medians, fastest first. Images with a UPX-packed binary (galley, manual) are compared "
          "with each other, and galley-noupx with the flows whose images are not packed.", ""]
    packed = {"galley", "manual"}
    unpacked = {"galley-noupx", "manual-noupx", "naive", "depcache", "cachemount"}
    for sc in SCEN_ORDER:
        for variants in sorted({s["variants"] for s in summary if s["scenario"] == sc}):
            rows = [s for s in summary if s["scenario"] == sc and s["variants"] == variants
                    and s["flow"] != "zigbuild" and s["n"]]
            if not rows:
                continue
            rows.sort(key=lambda s: s["wall_median_s"])
            order = ", ".join(f"{s['flow']} {fmt_s(s['wall_median_s'])}" for s in rows)
            verdicts = []
            for me, group in (("galley", packed), ("galley-noupx", unpacked)):
                g = [s for s in rows if s["flow"] in group]
                mine = [s for s in g if s["flow"] == me]
                if len(g) < 2 or not mine:
                    continue
                if g[0]["flow"] == me:
                    nxt = g[1]
                    verdicts.append(f"{me} is fastest of [{', '.join(x['flow'] for x in g)}] "
                                    f"({nxt['wall_median_s'] / mine[0]['wall_median_s']:.2f}x ahead of {nxt['flow']})")
                else:
                    verdicts.append(f"{me} **loses** to {g[0]['flow']} "
                                    f"({mine[0]['wall_median_s'] / g[0]['wall_median_s']:.2f}x its time)")
            L.append(f"- {SCEN_NAME[sc]} [{variants}]: {order}." + (" " + "; ".join(verdicts) + "." if verdicts else ""))
    L += ["", "## galley over the floor", "",
          "galley's median wall time over bare `cargo zigbuild` of the same variants (with UPX: plus "
          "host `strip` and `upx --best --lzma`, as timed in the zigbuild flow).", "",
          "| scenario | galley flow | variants | galley s | floor | floor s | ratio |", "|---|---|---|---|---|---|---|"]
    for r in data["ratios"]:
        L.append(f"| {SCEN_NAME[r['scenario']]} | {r['flow']} | {r['variants']} | {fmt_s(r['galley_s'])} | "
                 f"{r['floor']} | {fmt_s(r['floor_s'])} | **{r['ratio']:.2f}** |")
    L += ["", "## Sizes", "",
          "The last image each flow pushed, read back from the registry at the end of the run. Binary: `/app/authd` in the image. "
          "Image: layers uncompressed (tar) and as pushed (manifest + config + compressed layers); "
          "the runtime base is one busybox layer in every image.", "",
          "| flow | variant | binary MiB | image uncompressed MiB | pushed MiB |", "|---|---|---|---|---|"]
    for flow in FLOW_ORDER:
        for variant, s in sorted(sizes.get(flow, {}).items()):
            if flow == "zigbuild":
                L.append(f"| zigbuild | {variant} | raw {mib(s['raw_bytes'])}, stripped "
                         f"{mib(s['stripped_bytes'])}, upx {mib(s['upx_bytes'])} | - | - |")
            else:
                L.append(f"| {flow} | {variant} | {mib(s['binary_bytes'])} | {mib(s['uncompressed_bytes'])} | "
                         f"{mib(s['pushed_bytes'])} |")
    L += ["", "## What a cold run empties", ""]
    for flow in FLOW_ORDER:
        if any(s["flow"] == flow and s["scenario"] == "cold" for s in summary):
            L.append(f"- {flow}: {COLD_EMPTIES[flow]}.")
    if any(s["scenario"] == "coldproj" for s in summary):
        L.append("- cold project, warm toolchain (host flows only): the same as cold, then zig's cache "
                 "is filled with its musl libc and compiler-rt alone (by linking the dependency-free "
                 "fixture, not timed), as a multi-stage builder image arrives with its libc "
                 "prebuilt. Nothing of the project is in it: zig cc also caches C objects, so a "
                 "kept cache would hold sqlite3.c already.")
    L += ephemeral_section(data)
    failed = [r for r in data["runs"] if r["exit"] != 0]
    if failed:
        L += ["", "## Failed runs", "",
              "Counted in the tables as failed, left out of every median; the log of each is in "
              "`$GALLEY_BENCH_DIR/logs/`.", "",
              "| flow | scenario | rep | exit | note | log |", "|---|---|---|---|---|---|"]
        for r in failed:
            L.append(f"| {r['flow']} | {SCEN_NAME[r['scenario']]} | {r['rep']} | {r['exit']} | "
                     f"{r.get('note', '')} | {r['log']} |")
    cont = [r for r in data["runs"] if r["other_cores_avg"] > CONTENDED]
    if cont:
        L += ["", "## Contended runs", "",
              "| flow | scenario | rep | wall s | other cores (avg) | load avg start/end |", "|---|---|---|---|---|---|"]
        for r in cont:
            L.append(f"| {r['flow']} | {SCEN_NAME[r['scenario']]} | {r['rep']} | {fmt_s(r['wall_s'])} | "
                     f"{r['other_cores_avg']:.2f} | {r['loadavg_start']}/{r['loadavg_end']} |")
    return "\n".join(L) + "\n"


def ephemeral_section(data):
    """The ephemeral runner against its goals: within 2x of the warm host's one-line change, at
    least 4x faster than the cold multi-stage build of the same variants; the same commit again
    close to the no-change publish. With what the shared tiers answered."""
    summary = data["summary"]
    eph = [s for s in summary if s["scenario"] in ("ephemeral", "ephemeral-same") and s["n"]]
    if not eph:
        return []
    by = {(s["flow"], s["scenario"], s["variants"]): s for s in summary if s["n"]}
    L = ["", "## Ephemeral runner", "",
         "A fresh runner per build: an empty target dir, local stage cache and CARGO_HOME (crates "
         "downloaded again), zig's cache holding musl and compiler-rt alone. Warm: the registry's "
         "stage cache and sccache on Redis, from an earlier build of another commit (the seed, not "
         "counted). Goals: within 2x of the warm host, at least 4x faster than the cold multi-stage "
         "build of the same variants; the same commit again close to the no-change publish.", "",
         "| scenario | flow | variants | wall s | compared with | its s | ratio | goal | stages: remote / ran | sccache hits / misses / not cacheable |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for s in eph:
        runs = [r for r in data["runs"] if r["flow"] == s["flow"] and r["scenario"] == s["scenario"]
                and r["variants"] == s["variants"] and r["exit"] == 0 and r.get("galley")]
        uses = runs[-1]["galley"].get("cache_uses", {}) if runs else {}
        sc = (runs[-1]["galley"].get("sccache") or {}) if runs else {}
        tiers = f"{uses.get('remote', 0)} / {uses.get('ran', 0)}"
        sccache = f"{sc.get('hits', 0)} / {sc.get('misses', 0)} / {sc.get('not_cacheable', 0)}" if sc else "-"
        if s["scenario"] == "ephemeral":
            against = [("change", s["flow"], "warm host, one-line change", 2.0, "<="),
                       ("cold", "naive", "cold multi-stage (naive)", 0.25, "<="),
                       ("cold", "cachemount", "cold multi-stage (cache mounts)", 0.25, "<=")]
        else:
            against = [("nochange", s["flow"], "warm host, no change", None, None)]
        for scen, flow, label, goal, _ in against:
            o = by.get((flow, scen, s["variants"]))
            if not o:
                continue
            ratio = s["wall_median_s"] / o["wall_median_s"]
            verdict = "-" if goal is None else ("met" if ratio <= goal else "**missed**")
            goal_text = "-" if goal is None else (f"<= {goal:g}x" if goal >= 1 else f">= {1 / goal:g}x faster")
            L.append(f"| {SCEN_NAME[s['scenario']]} | {s['flow']} | {s['variants']} | {fmt_s(s['wall_median_s'])} | "
                     f"{label} | {fmt_s(o['wall_median_s'])} | {ratio:.2f}x | {goal_text}: {verdict} | {tiers} | {sccache} |")
        if not any(by.get((flow, scen, s["variants"])) for scen, flow, *_ in against):
            L.append(f"| {SCEN_NAME[s['scenario']]} | {s['flow']} | {s['variants']} | {fmt_s(s['wall_median_s'])} | "
                     f"(nothing to compare with in this run) | - | - | - | {tiers} | {sccache} |")
    return L


def merge_sizes(paths):
    out = {}
    for path in paths:
        for flow, per in json.load(open(path)).items():
            out.setdefault(flow, {}).update(per)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True, action="append", help="JSON lines; may repeat (merged)")
    ap.add_argument("--sizes", required=True, action="append", help="may repeat (merged per flow and variant)")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--args", default="")
    ap.add_argument("--quick", default="0")
    ap.add_argument("--notes", default="", help="file with one note per line for the results")
    a = ap.parse_args()
    runs = [json.loads(line) for path in a.runs for line in open(path) if line.strip()]
    summary = summarise(runs)
    name = os.path.basename(a.out)
    data = {
        "date": name, "args": a.args, "quick": a.quick == "1",
        "machine": json.load(open(a.machine)), "contended_threshold_cores": CONTENDED,
        "cold_empties": COLD_EMPTIES, "flows": {k: v[2] for k, v in FLOWS.items()},
        "notes": [n.strip() for n in open(a.notes)] if a.notes else [],
        "summary": summary, "ratios": ratios(summary),
        "sizes": merge_sizes(a.sizes), "runs": runs,
    }
    with open(a.out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(markdown(data, name))
    svg_chart(summary, a.out + ".svg", f"galley benchmark {name} on fixtures/authd")
    print(a.out + ".md")


if __name__ == "__main__":
    main()
