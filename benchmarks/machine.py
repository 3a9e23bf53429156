#!/usr/bin/env python3
"""Prints the machine description as JSON: CPU, memory, kernel, tool versions, buildah's storage."""
import json
import os
import platform
import subprocess


def out(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return "missing"


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def mem_gib():
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    return round(kb / 1024 / 1024, 1)


def buildah_storage():
    root = os.environ["BENCH_DIR"] + "/flows/naive"
    try:
        info = json.loads(subprocess.run(
            ["buildah", "--root", os.environ["BENCH_DIR"] + "/storage", "--runroot",
             os.environ["BENCH_DIR"] + "/runroot", "--storage-driver", "overlay", "info"],
            capture_output=True, text=True, timeout=60).stdout)
        store = info["store"]
        status = dict(store.get("GraphStatus") or {})
        return {"driver": store.get("GraphDriverName"), "status": status}
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"error": str(e), "root": root}


print(json.dumps({
    "nproc": os.cpu_count(),
    "memory_gib": mem_gib(),
    "cpu_model": cpu_model(),
    "kernel": platform.release(),
    "os": out("sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"),
    "rustc": out("rustc", "--version"),
    "cargo": out("cargo", "--version"),
    "zig": out("python3", "-m", "ziglang", "version"),
    "cargo_zigbuild": out("cargo-zigbuild", "--version"),
    "upx": out("upx", "--version"),
    "buildah": out("buildah", "--version"),
    "skopeo": out("skopeo", "--version"),
    "docker_registry": out("sh", "-c", "dpkg-query -W -f='${Version}' docker-registry"),
    "galley": out(os.environ.get("GALLEY_BIN", "galley"), "--version"),
    "buildah_storage": buildah_storage(),
}, indent=2))
