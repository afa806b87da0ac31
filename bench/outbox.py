#!/usr/bin/env python3
"""Outbox benchmark: SubmitRunStates and the drain (issue 20's rows).

Processes: the `emulator` command (client ids honoured, recording off) and a
gateway in front of it over h2c with `--outbox` in a scratch directory; the
load program is `examples/bench_outbox.rs`.

(a) accept: one SubmitRunStates of 10,000 creates (answered after fsync),
    while the write budget holds every write back (`1/3600s`).
(b) memory: the same gateway's RSS once 100,000 writes are pending.
(c) drain: 1,000 creates with the emulator enforcing Intune's limit
    (`--write-limit 200/20s`) and the gateway's default budget (200/20s):
    time to done, the 429s Graph answered, and the ratio to the budget's
    floors (five windows, 100 s; the last 200 starting after four, 80 s).
(d) resume: 50,000 pending, SIGKILL, start again on the same file: time to
    listen and time to the first delivery.

`--store postgres` runs the same rows with `--outbox postgres://…`: a private
PostgreSQL server (Debian's `postgresql` package, fsync on, run as the
`postgres` user when run as root) in a scratch directory, one database per
phase; the RSS row is the gateway's alone.

`--rows drain` (or `accept`, `resume`, comma-separated) runs only those
phases. Prints a Markdown section; `--append` adds it to bench/RESULTS.md. Loopback
only; every phase is bounded in time. Build first:
`cargo build --profile dist --bin runstate-gateway --example bench_outbox`
(or pass `--profile release` after a release build).
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, p: subprocess.Popen, name: str, timeout: float = 60.0) -> float:
    started = time.time()
    while time.time() - started < timeout:
        if p.poll() is not None:
            raise SystemExit(f"{name} exited with {p.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.time() - started
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"{name} did not listen on {port} within {timeout}s")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class PgServer:
    """A private PostgreSQL server on a free loopback port, trust auth."""

    def __init__(self):
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                       key=lambda p: int(p.parent.parent.name))
        if not found:
            raise SystemExit("--store postgres needs PostgreSQL: apt-get install postgresql")
        self.bin = found[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="runstate-bench-pg-"))
        (self.dir / "socket").mkdir()
        self.as_user = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            self.as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.dir)], check=True)
        subprocess.run(self.as_user + [str(self.bin / "initdb"), "-D", str(self.dir / "data"),
                                       "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                       "--locale=C", "--no-instructions"],
                       check=True, capture_output=True, cwd=self.dir)
        self.port = free_port()
        log = open(self.dir / "log", "a")
        self.proc = subprocess.Popen(
            self.as_user + [str(self.bin / "postgres"), "-D", str(self.dir / "data"),
                            "-p", str(self.port), "-k", str(self.dir / "socket"),
                            "-c", "listen_addresses=127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir)
        wait_port(self.port, self.proc, "postgres")
        started = time.time()
        while subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                              str(self.port)], capture_output=True).returncode != 0:
            if time.time() - started > 30:
                raise SystemExit("postgres did not get ready")
            time.sleep(0.1)

    def database(self, name: str) -> str:
        """A new database; its URL."""
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}?sslmode=disable"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Bench:
    def __init__(self, profile: str):
        out = ROOT / "target" / profile
        self.gateway_bin = out / "runstate-gateway"
        self.load = out / "examples" / "bench_outbox"
        self.dir = Path(tempfile.mkdtemp(prefix="runstate-bench-outbox-"))
        self.procs = []

    def start(self, argv: list, port: int, name: str):
        env = dict(os.environ, RUST_LOG="warn")
        log = open(self.dir / f"{name}.log", "a")
        p = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        took = wait_port(port, p, name)
        self.procs.append(p)
        return p, took

    def emulator(self, write_limit=None):
        port = free_port()
        argv = [self.gateway_bin, "emulator", "--listen", f"127.0.0.1:{port}",
                "--client-ids", "honour"]
        if write_limit:
            argv += ["--write-limit", write_limit]
        p, _ = self.start(argv, port, "emulator")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/_emulator/settings",
                                     data=json.dumps({"record": False}).encode(),
                                     method="PUT", headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=5).close()
        return p, port

    def gateway(self, emulator_port: int, outbox: Path, budget: str):
        port = free_port()
        argv = [self.gateway_bin, "--listen", f"127.0.0.1:{port}",
                "--graph-url", f"http://127.0.0.1:{emulator_port}/beta", "--graph-h2c",
                "--graph-token", "bench", "--graph-client-ids", "honour",
                "--write-budget", budget, "--outbox", outbox,
                "--max-request-bytes", str(16 << 20)]
        p, took = self.start(argv, port, "gateway")
        return p, port, took

    def run(self, *args, timeout=600.0) -> dict:
        r = subprocess.run([str(self.load), *[str(a) for a in args]], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise SystemExit(f"bench_outbox {args} failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []


def accept(b: Bench, rows: list, outbox, pg):
    """(a) and (b): every write held back by the budget."""
    _, emu = b.emulator()
    gw, port, _ = b.gateway(emu, outbox("a"), "1/3600s")
    target = f"http://127.0.0.1:{port}"
    idle = rss_kb(gw.pid)
    first = b.run("submit", target, 10_000, 1)
    rows.append(("accept 10,000 writes in one SubmitRunStates (fsync before the answer)",
                 f"{first['ms']:.0f} ms"))
    took = []
    for i in range(1, 10):
        took.append(b.run("submit", target, 10_000, 1 + i * 10_000)["ms"])
    time.sleep(3)
    rows.append(("RSS with 100,000 writes pending (idle before)",
                 f"{rss_kb(gw.pid) / 1024:.1f} MiB ({idle / 1024:.1f} MiB)"))
    rows.append(("accept, the next nine calls of 10,000 (min / max)",
                 f"{min(took):.0f} / {max(took):.0f} ms"))
    b.stop_all()


def resume(b: Bench, rows: list, outbox, pg):
    """(d) resume after SIGKILL with 50,000 pending."""
    _, emu = b.emulator()
    path = outbox("d")
    gw, port, _ = b.gateway(emu, path, "1/3600s")
    target = f"http://127.0.0.1:{port}"
    names = [b.run("submit", target, 10_000, 1 + i * 10_000)["name"] for i in range(5)]
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait()
    b.procs.remove(gw)
    started = time.time()
    gw, port, listen = b.gateway(emu, path, "off")
    b.run("first", f"http://127.0.0.1:{port}", names[0])
    label = "resume after SIGKILL with 50,000 pending: listening / first delivery"
    if pg:
        label += " (a new lease holder: after the killed one's 30 s lease)"
    rows.append((label, f"{listen * 1000:.0f} ms / {(time.time() - started) * 1000:.0f} ms"))
    b.stop_all()


def drain(b: Bench, rows: list, outbox, pg):
    """(c) drain 1,000 within Intune's limit."""
    _, emu = b.emulator(write_limit="200/20s")
    gw, port, _ = b.gateway(emu, outbox("c"), "200/20s")
    target = f"http://127.0.0.1:{port}"
    op = b.run("submit", target, 1000, 1)
    done = b.run("wait", target, op["name"], timeout=900)
    with urllib.request.urlopen(f"http://127.0.0.1:{emu}/_emulator/settings", timeout=5) as r:
        s = json.load(r)
    # The last 200 may start once 4 windows have passed (80 s); five
    # whole windows are 100 s.
    secs = done['ms'] / 1000
    rows.append(("drain 1,000 (emulator --write-limit 200/20s, budget 200/20s)",
                 f"{secs:.1f} s, {done['delivered']} delivered, "
                 f"{s['answered_429']} answered 429; {secs / 100:.2f}x five windows "
                 f"(100 s), {secs / 80:.2f}x the 80 s sliding-window floor"))
    b.stop_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="dist")
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--store", choices=["redb", "postgres"], default="redb",
                    help="the outbox: a redb file in the scratch directory, or a private PostgreSQL")
    ap.add_argument("--rows", default="accept,resume,drain",
                    help="phases to run, comma-separated: accept (rows a and b), resume, drain")
    a = ap.parse_args()
    phases = {r.strip() for r in a.rows.split(",") if r.strip()}
    unknown = phases - {"accept", "resume", "drain"}
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    b = Bench(a.profile)
    pg = PgServer() if a.store == "postgres" else None

    def outbox(name: str):
        return pg.database(name) if pg else b.dir / f"{name}.redb"

    rows = []
    try:
        for name, phase in (("accept", accept), ("resume", resume), ("drain", drain)):
            if name in phases:
                phase(b, rows, outbox, pg)
    finally:
        b.stop_all()
        if pg:
            pg.stop()
        shutil.rmtree(b.dir, ignore_errors=True)

    cpu = os.cpu_count()
    store = "redb" if not pg else "PostgreSQL on loopback, fsync on"
    text = [f"## Outbox ({datetime.date.today()}, {cpu} CPUs, profile {a.profile}, store {store})", "",
            "| row | result |", "|---|---|"]
    text += [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(text) + "\n"
    print(text)
    if a.append:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
