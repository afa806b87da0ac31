#!/usr/bin/env python3
"""Bulk-write benchmark: runstate-gateway's $batch and streaming RPCs.

One emulator (recording and storing off), one gateway in front of it over h2c
(`--graph-h2c`, write budget off), the load program `examples/bench_bulk.rs`.

(a) N device-state creates as one CreateScriptDeviceState per item
    (`--concurrency` in flight) vs BatchCreateScriptDeviceStates with
    `--batch-size` items per call: items/s, the ratio, and the gateway's CPU
    seconds per item (utime+stime from /proc/PID/stat).
(b) StreamCreateScriptDeviceStates with `--stream-n` items while the emulator
    answers each Graph request after `--slow-ms`: the gateway's RSS sampled
    from /proc/PID/status every 100 ms (idle, peak during the stream, after),
    and every item answered exactly once.

Prints a Markdown section; `--append` adds it at the end of bench/RESULTS.md.
Loopback only; every phase is bounded in count and time.
"""

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Cargo.toml's `dist` profile, as bench/run.py.
REL = ROOT / "target" / "dist"
GATEWAY = REL / "runstate-gateway"
BULK = REL / "examples" / "bench_bulk"
OUT = ROOT / "target" / "bench-bulk"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, p: subprocess.Popen, name: str, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"{name} exited with {p.returncode}; see {OUT}/{name}.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on {port} within {timeout}s")


def start(name: str, argv: list, port: int) -> subprocess.Popen:
    env = dict(os.environ, RUST_LOG="warn")
    logf = open(OUT / f"{name}.log", "w")
    p = subprocess.Popen([str(a) for a in argv], stdout=logf, stderr=subprocess.STDOUT,
                         env=env, start_new_session=True)
    wait_port(port, p, name)
    return p


def stop(p: subprocess.Popen):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def settings(port: int, body: dict):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_emulator/settings",
                                 data=json.dumps(body).encode(), method="PUT",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 204, r.status


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def bulk(port: int, *args, timeout: float) -> dict:
    argv = [str(BULK), "--target", f"http://127.0.0.1:{port}", *[str(a) for a in args]]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"bench_bulk {args} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def measured(gw: int, port: int, *args, timeout: float) -> dict:
    c0 = cpu_s(gw)
    res = bulk(port, *args, timeout=timeout)
    res["gateway_cpu_s"] = cpu_s(gw) - c0
    return res


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append(rss_kb(self.pid))
            time.sleep(self.every)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="items of phase (a)")
    ap.add_argument("--concurrency", type=int, default=64, help="single calls in flight in (a)")
    ap.add_argument("--batch-size", type=int, default=1000, help="items per Batch call in (a)")
    ap.add_argument("--stream-n", type=int, default=10000, help="items of the stream in (b)")
    ap.add_argument("--slow-ms", type=int, default=20, help="emulator latency in (b)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--append", action="store_true", help="append the section to bench/RESULTS.md")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.no_build:
        for what in (["--bin", "runstate-gateway"], ["--examples"]):
            subprocess.run(["cargo", "build", "--profile", "dist", *what],
                           cwd=ROOT, check=True, env=dict(os.environ, CARGO_INCREMENTAL="0"))

    eport, gport = free_port(), free_port()
    emu = start("emulator", [GATEWAY, "emulator", "--listen", f"127.0.0.1:{eport}"], eport)
    gwp = None
    try:
        settings(eport, {"record": False, "store": False})
        gwp = start("gateway", [GATEWAY, "--listen", f"127.0.0.1:{gport}", "--graph-url",
                                f"http://127.0.0.1:{eport}/beta", "--graph-token", "t",
                                "--graph-h2c", "--write-budget", "off"], gport)
        gw = gwp.pid
        # Warm-up: connections to the emulator and first allocations.
        bulk(gport, "--mode", "single", "--n", 200, "--concurrency", 16, timeout=120)
        bulk(gport, "--mode", "batch", "--n", 200, "--batch-size", 100, timeout=120)

        single = measured(gw, gport, "--mode", "single", "--n", args.n,
                          "--concurrency", args.concurrency, timeout=600)
        batch = measured(gw, gport, "--mode", "batch", "--n", args.n,
                         "--batch-size", args.batch_size, timeout=600)
        print(json.dumps({"single": single, "batch": batch}), file=sys.stderr)

        settings(eport, {"latency_ms": args.slow_ms})
        time.sleep(1.0)
        idle = rss_kb(gw)
        sampler = RssSampler(gw)
        sampler.start()
        c0 = cpu_s(gw)
        stream = bulk(gport, "--mode", "stream", "--n", args.stream_n, timeout=900)
        stream["gateway_cpu_s"] = cpu_s(gw) - c0
        sampler.done.set()
        sampler.join()
        time.sleep(1.0)
        after = rss_kb(gw)
        stream.update(rss_idle_kb=idle, rss_peak_kb=max(sampler.samples), rss_after_kb=after,
                      rss_samples=len(sampler.samples))
        print(json.dumps({"stream": stream}), file=sys.stderr)
    finally:
        if gwp is not None:
            stop(gwp)
        stop(emu)

    section = report(args, single, batch, stream)
    print(section)
    if args.append:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + section)


def report(args, single: dict, batch: dict, stream: dict) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mb = lambda kb: f"{kb / 1024:.1f}"  # noqa: E731
    ratio = batch["items_per_s"] / single["items_per_s"] if single["items_per_s"] else float("nan")
    def row(name, r, how):
        per_item_us = 1e6 * r["gateway_cpu_s"] / r["n"]
        return (f"| {name} | {how} | {r['n']} | {r['ok']} | {r['failed']} | {r['wall_s']:.2f} | "
                f"{r['items_per_s']:.0f} | {per_item_us:.0f} |")
    exactly_once = stream["never_answered"] == 0 and stream["answered_twice"] == 0
    lines = [
        "## Bulk writes",
        "",
        f"{now}, load average {load} (shared machine, so absolute figures are noisy; the ratio "
        "between rows of one run is what counts; CPU is counted in 10 ms ticks). "
        f"{os.cpu_count()} CPUs.",
        "",
        "Same emulator (recording and storing off) and same gateway process for every row; gateway "
        "to emulator over h2c (`--graph-h2c`), write budget off, loopback. Load program "
        "`examples/bench_bulk.rs` (one HTTP/2 connection, single-threaded runtime).",
        "",
        f"### Device-state creates: one call per item vs `$batch` ({args.n} items)",
        "",
        "| RPC | how | items | ok | failed | wall s | items/s | gateway CPU µs/item |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        row("CreateScriptDeviceState", single, f"one call per item, {args.concurrency} in flight"),
        row("BatchCreateScriptDeviceStates", batch,
            f"{args.batch_size} items per call, {batch['calls']} calls one after the other "
            "(gateway: Graph `$batch` of 20, 4 in flight)"),
        "",
        f"`$batch` vs one call per item: **{ratio:.1f}x** the items per second. Gateway CPU is "
        "utime+stime from /proc/PID/stat over the phase, divided by the items.",
        "",
        f"### Streaming: {args.stream_n} items through a {args.slow_ms} ms emulator",
        "",
        "`StreamCreateScriptDeviceStates`, one call; the sender makes items as fast as the gateway "
        "takes them (default `--stream-max-in-flight` 64). Gateway RSS sampled from "
        "/proc/PID/status every 100 ms.",
        "",
        "| items | ok | failed | never answered | answered twice | wall s | items/s | "
        "RSS before MB | RSS peak MB | RSS after MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {stream['n']} | {stream['ok']} | {stream['failed']} | {stream['never_answered']} | "
        f"{stream['answered_twice']} | {stream['wall_s']:.2f} | {stream['items_per_s']:.0f} | "
        f"{mb(stream['rss_idle_kb'])} | {mb(stream['rss_peak_kb'])} | {mb(stream['rss_after_kb'])} |",
        "",
        f"Every item answered exactly once: **{'yes' if exactly_once else 'NO'}** "
        f"({stream['rss_samples']} RSS samples). Peak minus before (the gateway has served phase (a) already): "
        f"{(stream['rss_peak_kb'] - stream['rss_idle_kb']) / 1024:.1f} MB for {stream['n']} items.",
        "",
    ]
    for name, r in (("single", single), ("batch", batch), ("stream", stream)):
        if r.get("first_error"):
            lines += [f"First {name} error: `{r['first_error']}`", ""]
    lines += ["Reproduce: `python3 bench/bulk.py --append` (builds the dist profile first; "
              "`--n`, `--concurrency`, `--batch-size`, `--stream-n`, `--slow-ms` change the sizes).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
