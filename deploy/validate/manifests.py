#!/usr/bin/env python3
"""Reads the manifests in deploy/, checks that they agree with each other,
and writes out what tests/deploy.rs checks against a real pgwake.

Usage: manifests.py OUTDIR

Writes:
  OUTDIR/configs/NAME.toml  a pgwake config embedded in a manifest (when it
                            has a file), and
  OUTDIR/configs/NAME.env   the PGWAKE_* variables that go with it (KEY=VALUE
                            lines), one pair per way pgwake is configured in
                            deploy/;
  OUTDIR/dashboard.tsv      the Grafana dashboard's queries: `expr\tPROMQL`
                            (template variables filled in), `metric\tNAME\t
                            MATCHER,...` for each series selector (`LABEL=VALUE`
                            for an equality, `LABEL=~` and so on for others), and
                            `labels\tMETRIC,...\tLABEL,...` for the labels a
                            query groups or names its legend by.
Exits 1, listing every problem, when the manifests disagree: a kustomization
that misses a file, a grace period shorter than pgwake's shutdown grace, a
start-up probe that gives up before its /readyz?wait= does, a ServiceMonitor
that selects nothing.

Needs PyYAML and python-hcl2 (deploy/requirements.txt).
"""

import json
import os
import re
import shlex
import sys
import tomllib

import hcl2
import yaml

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_CONFIG = os.path.join(DEPLOY, "docker", "pgwake.toml")
PROBLEMS = []


def problem(msg):
    PROBLEMS.append(msg)


def rel(path):
    return os.path.relpath(path, os.path.dirname(DEPLOY))


def seconds(text):
    """A pgwake/Go duration like "30s", "2m", "500ms" in seconds."""
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec.get("containers", [])


def is_pgwake(container):
    return "pgwake" in container.get("image", "").rsplit("/", 1)[-1]


def config_arg(container):
    args = container.get("args", [])
    if "--config" in args:
        return args[args.index("--config") + 1]
    return None


def check_probe(where, probe):
    path = probe.get("httpGet", {}).get("path", "")
    m = re.search(r"[?&]wait=([0-9a-z.]+)", path)
    if m and probe.get("timeoutSeconds", 1) <= seconds(m.group(1)):
        problem(f"{where}: timeoutSeconds {probe.get('timeoutSeconds', 1)} does not outlast {path}")


def shutdown_grace(toml_text):
    """How long pgwake may take to stop after SIGTERM: its shutdown delay
    (still serving) and then its grace period."""
    listen = tomllib.loads(toml_text).get("listen", {})
    return seconds(listen.get("shutdown_delay", "0s")) + seconds(listen.get("shutdown_grace", "30s"))


def write_config(out, name, toml_text, env):
    d = os.path.join(out, "configs")
    os.makedirs(d, exist_ok=True)
    if toml_text is not None:
        with open(os.path.join(d, name + ".toml"), "w", encoding="utf-8") as f:
            f.write(toml_text)
    with open(os.path.join(d, name + ".env"), "w", encoding="utf-8") as f:
        for k, v in env.items():
            f.write(f"{k}={v}\n")


def kubernetes(out):
    base = os.path.join(DEPLOY, "kubernetes")
    for app in sorted(os.listdir(base)):
        d = os.path.join(base, app)
        files = sorted(f for f in os.listdir(d) if f.endswith(".yaml"))
        kust = load_yaml(os.path.join(d, "kustomization.yaml"))
        listed = set(kust.get("resources", []))
        others = set(files) - {"kustomization.yaml"}
        if listed != others:
            problem(f"{rel(d)}/kustomization.yaml: resources {sorted(listed)} but files {sorted(others)}")
        if not kust.get("namespace"):
            problem(f"{rel(d)}/kustomization.yaml: no namespace")
        docs = {f: load_yaml(os.path.join(d, f)) for f in others}
        by_kind = {}
        for doc in docs.values():
            by_kind.setdefault(doc["kind"], []).append(doc)
        configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
        services = by_kind.get("Service", [])

        for dep in by_kind.get("Deployment", []):
            where = f"{rel(d)}: Deployment {dep['metadata']['name']}"
            spec = dep["spec"]["template"]["spec"]
            grace_period = spec.get("terminationGracePeriodSeconds", 30)
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in containers(spec):
                for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if kind in c:
                        check_probe(f"{where}, {c['name']} {kind}", c[kind])
                if not is_pgwake(c):
                    continue
                path = config_arg(c)
                if path is None:
                    problem(f"{where}: container {c['name']} has no --config")
                    continue
                mount = next((m for m in c.get("volumeMounts", [])
                              if m["mountPath"] == os.path.dirname(path)), None)
                cm_name = mount and volumes[mount["name"]].get("configMap", {}).get("name")
                toml_text = configmaps.get(cm_name, {}).get("data", {}).get(os.path.basename(path))
                if toml_text is None:
                    problem(f"{where}: {path} is not a key of a ConfigMap mounted there")
                    continue
                write_config(out, f"kubernetes-{app}", toml_text, {})
                cfg = tomllib.loads(toml_text)
                admin_port = int(cfg.get("admin", {}).get("addr", "127.0.0.1:9930").rsplit(":", 1)[1])
                if admin_port not in [p["containerPort"] for p in c.get("ports", [])]:
                    problem(f"{where}: admin port {admin_port} is not a container port")
                # Time to stop: the preStop hook, then pgwake's shutdown
                # grace; a sidecar also waits for the app containers to stop.
                need = shutdown_grace(toml_text)
                need += c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                if c.get("restartPolicy") == "Always":
                    for app_c in spec.get("containers", []):
                        m = re.search(r"--graceful-timeout[= ](\d+)", " ".join(app_c.get("args", [])))
                        need += int(m.group(1)) if m else 30
                if grace_period <= need:
                    problem(f"{where}: terminationGracePeriodSeconds {grace_period} does not exceed the {need:.0f} s pgwake may need to stop")

        for sm in by_kind.get("ServiceMonitor", []):
            sel = sm["spec"]["selector"]["matchLabels"]
            targets = [s for s in services
                       if sel.items() <= s["metadata"].get("labels", {}).items()]
            if not targets:
                problem(f"{rel(d)}: ServiceMonitor {sm['metadata']['name']} selects no Service")
            for ep in sm["spec"]["endpoints"]:
                for s in targets:
                    if ep["port"] not in [p["name"] for p in s["spec"]["ports"]]:
                        problem(f"{rel(d)}: ServiceMonitor port {ep['port']} is not a port of Service {s['metadata']['name']}")


def containerapp(out):
    path = os.path.join(DEPLOY, "azure", "containerapp.yaml")
    app = load_yaml(path)
    template = app["properties"]["template"]
    with open(IMAGE_CONFIG, encoding="utf-8") as f:
        image_toml = f.read()
    found = False
    for c in template["containers"]:
        for probe in c.get("probes", []):
            check_probe(f"{rel(path)}: {c['name']} {probe['type']} probe", probe)
        if not is_pgwake(c):
            continue
        found = True
        env = {}
        for e in c.get("env", []):
            # Secret references stand in as a placeholder value.
            env[e["name"]] = e.get("value", "placeholder-secret")
        write_config(out, "azure-containerapp", image_toml, env)
        grace = seconds(env.get("PGWAKE_LISTEN_SHUTDOWN_GRACE", "30s"))
        grace += seconds(env.get("PGWAKE_LISTEN_SHUTDOWN_DELAY", "0s"))
        if template.get("terminationGracePeriodSeconds", 30) <= grace:
            problem(f"{rel(path)}: terminationGracePeriodSeconds does not exceed PGWAKE_LISTEN_SHUTDOWN_DELAY + PGWAKE_LISTEN_SHUTDOWN_GRACE")
    if not found:
        problem(f"{rel(path)}: no pgwake container")


def docker(out):
    with open(IMAGE_CONFIG, encoding="utf-8") as f:
        image_toml = f.read()
    # As in the Dockerfile's `docker run` example.
    write_config(out, "docker-image", image_toml,
                 {"PGWAKE_SERVER_URL": "postgres://app@db:5432/app?sslmode=require",
                  "PGWAKE_SERVER_AUTH_PASSWORD": "placeholder-secret"})
    with open(os.path.join(DEPLOY, "docker", "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    if "ENV PGWAKE_CONFIG=/etc/pgwake/pgwake.toml" not in dockerfile or \
            "deploy/docker/pgwake.toml /etc/pgwake/pgwake.toml" not in dockerfile:
        problem("deploy/docker/Dockerfile: does not install deploy/docker/pgwake.toml as PGWAKE_CONFIG")


def systemd(out):
    path = os.path.join(DEPLOY, "systemd", "pgwake.toml")
    with open(path, encoding="utf-8") as f:
        toml_text = f.read()
    write_config(out, "systemd", toml_text, {})
    unit = {}
    with open(os.path.join(DEPLOY, "systemd", "pgwake.service"), encoding="utf-8") as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.strip().split("=", 1)
                unit[k] = v
    if shlex.split(unit["ExecStart"])[-1] != "/etc/pgwake/pgwake.toml":
        problem("deploy/systemd/pgwake.service: ExecStart does not read /etc/pgwake/pgwake.toml")
    if seconds(unit.get("TimeoutStopSec", "90s")) <= shutdown_grace(toml_text):
        problem("deploy/systemd/pgwake.service: TimeoutStopSec does not exceed listen.shutdown_grace")


# What the Terraform outputs' references stand for in a check.
TERRAFORM_PLACEHOLDERS = {
    "fqdn": "my-server.postgres.database.azure.com",
    "name": "pgwake",
    "client_id": "00000000-0000-0000-0000-000000000000",
    "id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/data"
          "/providers/Microsoft.DBforPostgreSQL/flexibleServers/my-server",
}


def terraform_values(value):
    """The values an output expression can take: a literal, each branch of a
    conditional, or a placeholder for a resource attribute."""
    m = re.fullmatch(r"\$\{(.*)\}", value.strip(), re.S)
    if not m:
        return [value]
    expr = m.group(1)
    branches = re.fullmatch(r".*\?\s*\"([^\"]*)\"\s*:\s*\"([^\"]*)\"\s*", expr, re.S)
    if branches:
        return list(branches.groups())
    attr = expr.strip().rsplit(".", 1)[-1]
    if attr not in TERRAFORM_PLACEHOLDERS:
        problem(f"deploy/azure/terraform: no placeholder for {expr}")
        return ["placeholder"]
    return [TERRAFORM_PLACEHOLDERS[attr]]


def terraform(out):
    d = os.path.join(DEPLOY, "azure", "terraform")
    parsed = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".tf"):
            with open(os.path.join(d, f), encoding="utf-8") as fh:
                parsed[f] = hcl2.load(fh)
    outputs = {}
    for doc in parsed.values():
        for o in doc.get("output", []):
            outputs.update(o)
    env_out = outputs.get("pgwake_environment")
    if env_out is None:
        problem("deploy/azure/terraform: no output pgwake_environment")
        return
    value = env_out["value"]
    # python-hcl2 gives an attribute's value as a one-element list.
    value = value[0] if isinstance(value, list) else value
    env = {k: terraform_values(v) for k, v in value.items()}
    # One config per combination of the conditionals' branches.
    variants = [{}]
    for k, values in env.items():
        variants = [dict(v, **{k: x}) for v in variants for x in values]
    for i, v in enumerate(variants):
        write_config(out, f"terraform-output-{i}", None, v)


def dashboard(out):
    path = os.path.join(DEPLOY, "grafana", "pgwake.json")
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    lines = []
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                exprs.append((t["expr"], t.get("legendFormat", "")))

    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
        if m:
            exprs.append((m.group(1), "{{" + m.group(2) + "}}"))
    if not exprs:
        problem(f"{rel(path)}: no queries")
    for expr, legend in exprs:
        filled = (expr.replace("$__rate_interval", "1m")
                  .replace("$instance", ".*").replace("$database", ".*"))
        if "$" in filled:
            problem(f"{rel(path)}: unknown template variable in {expr}")
        lines.append(f"expr\t{filled}")
        names = []
        for name, matchers in re.findall(r"\b(pgwake_\w+)(\{[^}]*\})?", filled):
            names.append(name)
            found = re.findall(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"", matchers)
            lines.append("metric\t" + name + "\t"
                         + ",".join(f"{k}={v}" if op == "=" else f"{k}{op}" for k, op, v in found))
        labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        for group in re.findall(r"\bby\s*\(([^)]*)\)", filled):
            labels.update(x.strip() for x in group.split(",") if x.strip())
        labels -= {"le"}
        if labels:
            lines.append("labels\t" + ",".join(sorted(set(names))) + "\t" + ",".join(sorted(labels)))
    with open(os.path.join(out, "dashboard.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: manifests.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for step in (kubernetes, containerapp, docker, systemd, terraform, dashboard):
        step(out)
    if PROBLEMS:
        print("\n".join(PROBLEMS), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
