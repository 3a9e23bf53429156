#!/usr/bin/env python3
"""Final image sizes per flow and variant, read from the benchmark's registry (filesystem storage)
after the runs: bytes as pushed (manifest + config + compressed layers), uncompressed (layer tars),
and the size of /app/authd in the image. For the zigbuild flow, its binaries (raw, stripped, UPX).

    sizes.py RUNS.jsonl > sizes.json   (env: REGISTRY, REGISTRY_ROOT, BENCH_DIR)
"""
import gzip
import json
import os
import subprocess
import sys
import tarfile

root = os.environ["REGISTRY_ROOT"]
registry = os.environ["REGISTRY"]


def blob(digest):
    algo, hexd = digest.split(":")
    return os.path.join(root, "docker/registry/v2/blobs", algo, hexd[:2], hexd, "data")


def image_sizes(flow, variant):
    r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                        f"docker://{registry}/bench/{flow}:{variant}-1.0.0"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return None
    manifest = json.loads(r.stdout)
    if "manifests" in manifest:  # an index: take the linux/amd64 image
        d = manifest["manifests"][0]["digest"]
        with open(blob(d)) as f:
            raw = f.read()
        manifest = json.loads(raw)
        pushed = len(r.stdout.encode()) + len(raw.encode())
    else:
        pushed = len(r.stdout.encode())
    pushed += manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    uncompressed, binary = 0, None
    for layer in manifest["layers"]:
        path = blob(layer["digest"])
        opener = gzip.open if "gzip" in layer["mediaType"] or layer["mediaType"].endswith("diff.tar.gzip") else open
        n = 0
        with opener(path, "rb") as f:
            while chunk := f.read(1 << 20):
                n += len(chunk)
        uncompressed += n
        with tarfile.open(path, "r:*") as t:
            for m in t.getmembers():
                if m.name.lstrip("./") == "app/authd" and m.isfile():
                    binary = m.size
    return {"pushed_bytes": pushed, "uncompressed_bytes": uncompressed, "binary_bytes": binary,
            "layers": len(manifest["layers"])}


flows, variants = set(), set()
with open(sys.argv[1]) as f:
    for line in f:
        rec = json.loads(line)
        flows.add(rec["flow"])
        variants.update(rec["variants"].split(","))
sizes = {}
for flow in sorted(flows):
    for variant in sorted(variants):
        if flow == "zigbuild":
            b = os.path.join(os.environ["BENCH_DIR"], "flows/zigbuild/bin", f"authd-{variant}")
            if os.path.exists(b):
                sizes.setdefault(flow, {})[variant] = {
                    "raw_bytes": os.path.getsize(b + ".raw"),
                    "stripped_bytes": os.path.getsize(b + ".stripped"),
                    "upx_bytes": os.path.getsize(b)}
            continue
        s = image_sizes(flow, variant)
        if s:
            sizes.setdefault(flow, {})[variant] = s
json.dump(sizes, sys.stdout, indent=2)
