#!/usr/bin/env python3
"""Checks docker/ and deploy/kubernetes/ against the repository, where no Docker
engine or cluster is available: every COPY source exists (and survives the
.dockerignore), the health checks call the installed binary, compose wires the
services as documented, and the Kubernetes sidecar keeps gRPC on loopback with
probes on the admin port. Schema validation is kubernetes-validate's job
(.ci/run). Usage: python3 .ci/check_deploy.py [path/to/runstate-gateway]
With a binary, every RUNSTATE_*/GRAPH_* variable set in compose and the
manifests must be one that `--help` documents."""

import fnmatch
import os
import re
import shlex
import subprocess
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BINARY = "/usr/local/bin/runstate-gateway"
errors = []


def check(condition, message):
    if not condition:
        errors.append(message)
    return condition


def dockerfile_instructions(path):
    """(instruction, argument text) pairs, continuation lines joined."""
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def ignored(path, patterns):
    """Whether a .dockerignore (last matching pattern wins) excludes `path`."""
    verdict = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if pattern == "**" or any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            verdict = not negate
    return verdict


def check_dockerfile():
    path = os.path.join(ROOT, "docker", "Dockerfile")
    instructions = dockerfile_instructions(path)
    ignore_file = path + ".dockerignore"
    patterns = []
    if os.path.exists(ignore_file):
        patterns = [
            line.strip()
            for line in open(ignore_file, encoding="utf-8")
            if line.strip() and not line.startswith("#")
        ]
    installed = None
    stages = []
    for word, rest in instructions:
        if word == "FROM":
            stages.append(rest)
        if word in ("COPY", "ADD"):
            args = shlex.split(rest)
            flags = [a for a in args if a.startswith("--")]
            paths = [a for a in args if not a.startswith("--")]
            check(len(paths) >= 2, f"Dockerfile: {word} {rest}: no source or destination")
            if any(f.startswith("--from=") for f in flags):
                if paths and paths[-1] == BINARY:
                    installed = paths[-1]
                continue
            check(word == "COPY", f"Dockerfile: use COPY, not ADD: {rest}")
            for source in paths[:-1]:
                full = os.path.join(ROOT, source)
                check(os.path.exists(full), f"Dockerfile: COPY source {source!r} is not in the repository")
                check(not ignored(source, patterns), f"Dockerfile: COPY source {source!r} is excluded by {ignore_file}")
    check(installed == BINARY, f"Dockerfile: the final stage must install the binary at {BINARY}")
    check(stages and "distroless" in stages[-1], "Dockerfile: the final image must be distroless")
    users = [rest for word, rest in instructions if word == "USER"]
    check(users and users[-1].split(":")[0] not in ("0", "root"), "Dockerfile: the final USER must not be root")
    health = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    if check(len(health) == 1, "Dockerfile: exactly one HEALTHCHECK"):
        cmd = health[0].split("CMD", 1)[-1].strip()
        check(cmd.startswith("["), "Dockerfile: HEALTHCHECK must use the exec form (no shell in distroless)")
        check(
            cmd.replace(" ", "") == f'["{BINARY}","healthcheck"]',
            f"Dockerfile: HEALTHCHECK must run {BINARY} healthcheck, found {cmd}",
        )
    entry = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    check(entry and BINARY in entry[-1], "Dockerfile: ENTRYPOINT must be the installed binary")
    text = open(path, encoding="utf-8").read()
    check("cargo chef cook" in text and "--mount=type=cache" in text, "Dockerfile: dependency layer must be cached")
    # The --bin name must be the one Cargo.toml declares.
    cargo = open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8").read()
    for name in re.findall(r"--bin\s+(\S+)", text):
        check(f'name = "{name}"' in cargo, f"Dockerfile: --bin {name} is not a binary of Cargo.toml")
    # Every workspace member must be copied where cargo reads manifests.
    members = re.search(r"^members\s*=\s*\[([^\]]*)\]", cargo, re.M)
    for member in re.findall(r'"([^"]+)"', members.group(1) if members else ""):
        if member != ".":
            check(text.count(f"COPY {member} ./{member}") >= 2, f"Dockerfile: workspace member {member}/ must be copied for the recipe and the build")
    # The binary is built with the shipped profile and copied from its folder.
    profile = re.search(r"cargo build --profile (\S+)", text)
    if check(profile is not None, "Dockerfile: build with `cargo build --profile dist`"):
        check(f"target/{profile.group(1)}/runstate-gateway" in text, f"Dockerfile: the binary is copied from target/{profile.group(1)}/")
        check(re.search(rf"^\[profile\.{re.escape(profile.group(1))}\]", cargo, re.M) is not None, f"Dockerfile: Cargo.toml has no [profile.{profile.group(1)}]")
    # Every bench/example target named in Cargo.toml must be copied where cargo reads manifests.
    for section in ("bench", "example"):
        if re.search(rf"^\[\[{section}\]\]", cargo, re.M):
            folder = section + ("es" if section == "bench" else "s")
            check(f"COPY {folder} ./{folder}" in text, f"Dockerfile: Cargo.toml names a {section} target: COPY {folder}/")


def env_list(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_compose():
    path = os.path.join(ROOT, "docker", "compose.yaml")
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    services = doc.get("services", {})
    check(set(services) >= {"gateway", "emulator"}, "compose: services gateway and emulator")
    for name, service in services.items():
        hc = service.get("healthcheck", {})
        test = hc.get("test")
        if check(isinstance(test, list) and test[:2] == ["CMD", BINARY], f"compose: {name}: healthcheck test must be [CMD, {BINARY}, ...]"):
            check(test[2] == "healthcheck", f"compose: {name}: healthcheck must run the healthcheck subcommand")
        for key in ("interval", "timeout", "retries"):
            check(key in hc, f"compose: {name}: healthcheck.{key}")
        build = service.get("build")
        if build:
            context = os.path.normpath(os.path.join(ROOT, "docker", build["context"]))
            check(context == ROOT, f"compose: {name}: build context must be the repository root")
            check(os.path.exists(os.path.join(context, build["dockerfile"])), f"compose: {name}: dockerfile missing")
    emulator = services.get("emulator", {})
    command = emulator.get("command", [])
    check(command[:1] == ["emulator"], "compose: the emulator service runs `emulator`")
    listen = command[command.index("--listen") + 1] if "--listen" in command else ""
    check(listen.startswith("0.0.0.0:"), "compose: the emulator listens on 0.0.0.0")
    port = listen.rsplit(":", 1)[-1]
    probe = emulator.get("healthcheck", {}).get("test", [])
    check("--http" in probe and f"127.0.0.1:{port}/_emulator/health" in " ".join(probe), "compose: the emulator is probed on its /_emulator/health")
    gateway = services.get("gateway", {})
    depends = gateway.get("depends_on", {})
    check(
        isinstance(depends, dict) and depends.get("emulator", {}).get("condition") == "service_healthy",
        "compose: gateway depends_on emulator with condition service_healthy",
    )
    env = gateway.get("environment", {})
    expected = {
        "RUNSTATE_ALLOW_PLAINTEXT": "true",
        "RUNSTATE_ALLOW_HTTP_UPSTREAM": "true",
        "GRAPH_URL": f"http://emulator:{port}/beta",
    }
    for key, value in expected.items():
        check(env.get(key) == value, f"compose: gateway {key} must be {value!r}, is {env.get(key)!r}")
    check(str(env.get("RUNSTATE_LISTEN", "")).startswith("0.0.0.0:"), "compose: gateway RUNSTATE_LISTEN on 0.0.0.0")
    return {name: service.get("environment", {}) for name, service in services.items()}


QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def check_kubernetes():
    folder = os.path.join(ROOT, "deploy", "kubernetes")
    docs = []
    for name in sorted(os.listdir(folder)):
        if name.endswith((".yaml", ".yml")):
            docs += [d for d in yaml.safe_load_all(open(os.path.join(folder, name), encoding="utf-8")) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    accounts = {a["metadata"]["name"]: a for a in by_kind.get("ServiceAccount", [])}
    deployments = by_kind.get("Deployment", [])
    check(deployments, "kubernetes: a Deployment")
    envs = {}
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]
        spec = pod["spec"]
        check(pod["metadata"]["labels"].get("azure.workload.identity/use") == "true", f"kubernetes: {name}: label azure.workload.identity/use: \"true\"")
        account = accounts.get(spec.get("serviceAccountName"))
        if check(account is not None, f"kubernetes: {name}: its ServiceAccount is in deploy/kubernetes/"):
            check("azure.workload.identity/client-id" in account["metadata"].get("annotations", {}), "kubernetes: the ServiceAccount has the client-id annotation")
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        gateways = [c for c in containers if "runstate-gateway" in c["image"]]
        if not check(len(gateways) == 1, f"kubernetes: {name}: one gateway container"):
            continue
        gw = gateways[0]
        env = env_list(gw)
        envs[name] = env
        check(env.get("RUNSTATE_LISTEN", "").startswith("127.0.0.1:"), "kubernetes: the gateway's gRPC port stays on loopback")
        check(env.get("GRAPH_AUTH") == "workload-identity", "kubernetes: GRAPH_AUTH=workload-identity")
        admin = env.get("RUNSTATE_ADMIN_LISTEN", "")
        check(admin.startswith("0.0.0.0:"), "kubernetes: the admin port binds the pod address")
        admin_port = int(admin.rsplit(":", 1)[-1]) if admin else None
        ports = {p.get("name"): p["containerPort"] for p in gw.get("ports", [])}
        check(admin_port in ports.values(), "kubernetes: the admin port is a declared container port")
        check(50051 not in ports.values(), "kubernetes: the gRPC port is not exposed")
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
            get = gw.get(probe, {}).get("httpGet", {})
            port = get.get("port")
            port = ports.get(port, port)
            check(get.get("path") == path and port == admin_port, f"kubernetes: {probe} is GET {path} on the admin port")
        annotations = pod["metadata"].get("annotations", {})
        check(annotations.get("prometheus.io/port") == str(admin_port), "kubernetes: Prometheus scrapes the admin port")
        resources = gw.get("resources", {})
        for kind in ("requests", "limits"):
            for key, value in resources.get(kind, {}).items():
                check(QUANTITY.match(str(value)) is not None, f"kubernetes: {kind}.{key} {value!r} is not a quantity")
        check({"cpu", "memory"} <= set(resources.get("requests", {})), "kubernetes: the gateway requests cpu and memory")
        check("memory" in resources.get("limits", {}), "kubernetes: the gateway has a memory limit")
        if gw in spec.get("initContainers", []):
            check(gw.get("restartPolicy") == "Always", "kubernetes: a gateway init container must be a native sidecar")
    return envs


def check_env_names(binary, env_sets):
    help_text = ""
    for args in ([], ["emulator"]):
        help_text += subprocess.run([binary, *args, "--help"], capture_output=True, text=True, check=True).stdout
    for where, env in env_sets.items():
        for key in env:
            if key.startswith(("RUNSTATE_", "GRAPH_")):
                check(key in help_text, f"{where}: {key} is not documented by `runstate-gateway --help`")


def main():
    check_dockerfile()
    compose_envs = check_compose()
    k8s_envs = check_kubernetes()
    if len(sys.argv) > 1:
        check_env_names(sys.argv[1], {**{f"compose {k}": v for k, v in compose_envs.items()}, **{f"kubernetes {k}": v for k, v in k8s_envs.items()}})
    for e in errors:
        print("error:", e, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("docker/ and deploy/kubernetes/ are consistent with the repository")


if __name__ == "__main__":
    main()
