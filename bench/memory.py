#!/usr/bin/env python3
"""Idle RSS and peak RSS with calls in flight against a slow upstream, for
several gateway binaries side by side (the memory rows of `run.py`, without
Envoy and the CPU rows), to compare builds in one session.

    python3 bench/memory.py --rounds 3 before=/tmp/gw-before after=target/release/runstate-gateway

Each run: a fresh gateway (one worker, h2c to the emulator, `--write-budget
off`, as in `run.py`), its VmRSS 1 s after it listens (idle), then
`bench_loadgen` with `--inflight` calls against an emulator answering after
`--slow-ms`; VmHWM after that is the peak. Binaries are interleaved round by
round. Each binary is dropped from the page cache before it starts:
file-backed RSS otherwise depends on how the file got there (a freshly
copied binary maps about 2 MB more at idle). Build the load generator first:
`cargo build --release --example bench_loadgen` (or `--profile dist`).
"""

import argparse
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int):
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"nothing listens on {port}")


def status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


def uncache(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_one(a, binary: str, emulator_port: int) -> tuple:
    uncache(binary)
    port = free_port()
    env = dict(os.environ, RUST_LOG="warn", TOKIO_WORKER_THREADS="1")
    argv = [binary, "--listen", f"127.0.0.1:{port}", "--graph-url",
            f"http://127.0.0.1:{emulator_port}/beta", "--graph-token", "bench-token",
            "--write-budget", "off", "--allow-http-upstream", "--graph-h2c"]
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        time.sleep(1.0)
        idle = status(p.pid)
        r = subprocess.run([a.loadgen, "--mode", "grpc", "--target", f"http://127.0.0.1:{port}",
                            "--rpc", "user", "--concurrency", str(a.inflight), "--duration",
                            str(a.duration), "--warmup", "1", "--streams-per-conn", "64",
                            "--threads", "1"], capture_output=True, text=True,
                           timeout=a.duration + 60)
        res = json.loads(r.stdout)
        return idle, status(p.pid), res.get("errors")
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+", help="LABEL=PATH of a runstate-gateway binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=1000)
    ap.add_argument("--slow-ms", type=int, default=500)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--loadgen", default=str(ROOT / "target/release/examples/bench_loadgen"))
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.binaries]
    emulator_port = free_port()
    emulator = subprocess.Popen([bins[0][1], "emulator", "--listen", f"127.0.0.1:{emulator_port}"],
                                env=dict(os.environ, RUST_LOG="warn"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(emulator_port)
        body = json.dumps({"record": False, "store": False, "latency_ms": a.slow_ms}).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{emulator_port}/_emulator/settings", data=body, method="PUT",
            headers={"content-type": "application/json"}), timeout=5).close()
        seen = {label: [] for label, _ in bins}
        for r in range(a.rounds):
            for label, binary in bins:
                idle, after, errors = run_one(a, binary, emulator_port)
                seen[label].append((idle, after))
                print(f"round {r + 1} {label}: idle {idle['VmRSS'] / 1024:.1f} MB (anon "
                      f"{idle['RssAnon'] / 1024:.1f}, file {idle['RssFile'] / 1024:.1f}, "
                      f"{idle['Threads']} threads), peak {after['VmHWM'] / 1024:.1f} MB, "
                      f"after {after['VmRSS'] / 1024:.1f} MB, errors {errors}", flush=True)
        print(f"\n| binary | idle RSS MB (median) | peak RSS MB, {a.inflight} in flight (median) "
              "| RSS after the load MB (median) |\n|---|---:|---:|---:|")
        for label, runs in seen.items():
            med = lambda xs: sorted(xs)[len(xs) // 2] / 1024
            print(f"| {label} | {med([i['VmRSS'] for i, _ in runs]):.1f} | "
                  f"{med([x['VmHWM'] for _, x in runs]):.1f} | "
                  f"{med([x['VmRSS'] for _, x in runs]):.1f} |")
    finally:
        emulator.terminate()
        emulator.wait()


if __name__ == "__main__":
    main()
