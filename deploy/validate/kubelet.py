#!/usr/bin/env python3
"""Works out, for every way deploy/ runs pgwake, what the platform would
start: the process's arguments, environment and files, its probes and how
it is stopped. tests/kubelet.rs starts the real binary from these plans.

Usage: kubelet.py OUTDIR [--deploy DIR]

Platforms, each as it builds a container or service:
  Kubernetes (deploy/kubernetes/*): every pgwake container of every pod
    template, as the kubelet runs it: the image's ENTRYPOINT, CMD and ENV
    (deploy/docker/Dockerfile), `command` and `args`, `envFrom`, `env` with
    `$(VAR)` expansion and the downward API, service-link variables (unless
    the pod sets enableServiceLinks: false), the Azure workload identity
    webhook's variables and token for pods labelled for it, ConfigMap and
    Secret volumes (subPath and items respected), runAsUser/runAsGroup,
    the probes with named ports resolved, terminationGracePeriodSeconds and
    a preStop sleep;
  Azure Container Apps (deploy/azure/containerapp.yaml): the same from the
    image, the platform's variables (its managed identity endpoint among
    them), `env` with secret references, and the probes;
  systemd (deploy/systemd/pgwake.service): ExecStart, Environment= and
    EnvironmentFile=, the files the unit's install comment puts in place,
    the user (DynamicUser= or User=), RuntimeDirectory=,
    ConfigurationDirectory=, UMask=, LimitNOFILE=, ExecReload= and
    TimeoutStopSec=.

Each plan also names the clients the manifests document (an app
container's DATABASE_URL, a connection string in a Service's comment, the
psql command in a config's comment). Values the platform owns (the
identity endpoint, the tenant) are placeholders `{{name}}` that the test
fills; secret contents are named kinds of test material (`tls-cert`,
`userlist`, ...).

Writes OUTDIR/NAME.plan, one line per fact, fields separated by tabs, each
field escaped (`\\\\`, `\\t`, `\\n`):
  source   FILE                      the manifest it comes from
  binary   PATH                      where pgwake is installed
  argv     ARG...                    the command line
  env      NAME VALUE                the environment, in full
  file     PATH MODE OWNER text TEXT    a file and its content
  file     PATH MODE OWNER material KIND   a file of test material
  dir      PATH MODE OWNER           a directory (OWNER: root or user)
  root     PREFIX                    a path prefix the files live under
  user     UID GID | dynamic NAME | NAME   who runs it (absent: root)
  umask    MODE
  nofile   LIMIT
  nonewprivs
  probe    KIND TYPE INITIAL PERIOD TIMEOUT SUCCESS FAILURE TARGET...
           (http: PORT PATH; tcp: PORT; exec: ARG...)
  prestop  SECONDS                   a preStop sleep
  grace    SECONDS                   the time from stop to SIGKILL
  reload   ARG...                    the reload command ($MAINPID: the pid)
  client   PORT URL                  a documented client; {{port}} in URL
  clientuser NAME                    the OS user the client runs as
Exits 1, listing every problem, when a manifest asks for something this
emulation does not know.

Needs PyYAML (deploy/requirements.txt).
"""

import argparse
import json
import os
import re
import shlex
import sys
import tomllib
from urllib.parse import unquote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from manifests import containers, is_pgwake, load_yaml  # noqa: E402

PROBLEMS = []

# The environment of Debian's images (the Dockerfile's runtime base).
BASE_IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
# The addresses a pod gets in the emulation: the test probes and connects
# on 127.0.0.1, so the pod and node IP are that.
POD_IP = "127.0.0.1"
NODE_NAME = "aks-nodepool1-00000000-vmss000000"
# Azure workload identity's mutating webhook (azure.workload.identity/use).
WI_TOKEN_DIR = "/var/run/secrets/azure/tokens"
WI_TOKEN_PATH = WI_TOKEN_DIR + "/azure-identity-token"
# systemd's environment for a service with a user (systemd.exec(5)).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def problem(msg):
    PROBLEMS.append(msg)


def esc(value):
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


class Plan:
    def __init__(self, name, source):
        self.name = name
        self.lines = [("source", source)]
        self.roots = set()

    def add(self, *fields):
        self.lines.append(tuple(str(f) for f in fields))

    def file(self, path, mode, owner, kind, value):
        self.add("file", path, f"{mode:04o}", owner, kind, value)
        self.roots.add(os.path.dirname(path))

    def dir(self, path, mode, owner):
        self.add("dir", path, f"{mode:04o}", owner)
        self.roots.add(path)

    def write(self, out):
        # The fewest prefixes that hold every path: /etc/pgwake holds
        # /etc/pgwake/config.
        roots = sorted(self.roots)
        kept = [r for r in roots if not any(r != o and r.startswith(o + "/") for o in roots)]
        with open(os.path.join(out, self.name + ".plan"), "w", encoding="utf-8") as f:
            for line in self.lines + [("root", r) for r in kept]:
                f.write("\t".join(esc(x) for x in line) + "\n")


# --- The container image -------------------------------------------------


def dockerfile(deploy):
    """The runtime stage of deploy/docker/Dockerfile: ENV, USER, ENTRYPOINT,
    CMD and the files it copies in (source and destination)."""
    path = os.path.join(deploy, "docker", "Dockerfile")
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stage = None
    for line in text.splitlines():
        if not line.strip():
            continue
        op, _, rest = line.strip().partition(" ")
        op = op.upper()
        rest = rest.strip()
        if op == "FROM":
            stage = {"env": dict(BASE_IMAGE_ENV), "user": None, "entrypoint": [], "cmd": [], "copies": []}
        elif stage is None:
            continue
        elif op == "ENV":
            for pair in shlex.split(rest):
                k, _, v = pair.partition("=")
                stage["env"][k] = v
        elif op == "USER":
            stage["user"] = rest
        elif op in ("ENTRYPOINT", "CMD"):
            stage["entrypoint" if op == "ENTRYPOINT" else "cmd"] = json.loads(rest)
            if op == "ENTRYPOINT":
                stage["cmd"] = []
        elif op == "COPY":
            words = shlex.split(rest)
            from_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            srcs = [w for w in words if not w.startswith("--")]
            stage["copies"].append((from_stage, srcs[0], srcs[-1]))
    if stage is None:
        problem(f"{path}: no FROM")
    return stage


def image_files(plan, deploy, image):
    """The files of the image that pgwake reads, laid out as the image has
    them: the repository's files as they are, the rest as test material."""
    repo = os.path.dirname(deploy)
    for from_stage, src, dst in image["copies"]:
        if from_stage is None:
            with open(os.path.join(repo, src), encoding="utf-8") as f:
                plan.file(dst, 0o644, "root", "text", f.read())
        elif os.path.basename(dst) == "pgwake":
            plan.add("binary", dst)
            plan.file(dst, 0o755, "root", "material", "pgwake-binary")
        elif dst.endswith("ca-certificates.crt"):
            # The system roots: in the test, the roots that signed the
            # server's certificate.
            plan.file(dst, 0o644, "root", "material", "ca-bundle")
        else:
            problem(f"deploy/docker/Dockerfile: what does the image's {dst} (from stage {from_stage}) hold?")


def image_user(image):
    user = image["user"] or "0:0"
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        problem(f"deploy/docker/Dockerfile: USER {user} is not numeric")
        return None
    return int(uid), int(gid or uid)


# --- Kubernetes ----------------------------------------------------------


def env_name(name):
    """The kubelet's makeEnvVariableName."""
    return name.upper().replace("-", "_")


def service_env(services):
    """The kubelet's service-link variables (pkg/kubelet/envvars) for
    (name, cluster IP, ports) triples."""
    env = {}
    for name, ip, ports in services:
        prefix = env_name(name)
        env[prefix + "_SERVICE_HOST"] = ip
        env[prefix + "_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            if p.get("name"):
                env[prefix + "_SERVICE_PORT_" + env_name(p["name"])] = str(p["port"])
        for i, p in enumerate(ports):
            proto = p.get("protocol", "TCP")
            url = f"{proto.lower()}://{ip}:{p['port']}"
            if i == 0:
                env[prefix + "_PORT"] = url
            pp = f"{prefix}_PORT_{p['port']}_{proto.upper()}"
            env[pp] = url
            env[pp + "_PROTO"] = proto.lower()
            env[pp + "_PORT"] = str(p["port"])
            env[pp + "_ADDR"] = ip
    return env


# The API server's Service in the default namespace: its variables reach
# every container, whatever enableServiceLinks says.
MASTER_SERVICE = ("kubernetes", "10.0.0.1", [{"name": "https", "port": 443}])


def cluster_services(all_services):
    """(name, cluster IP, ports) for every Service in the manifests plus
    one named pgwake: a kustomization's namespace is easily changed, so any
    of them may share a pod's namespace, and pgwake is the name the shared
    service takes, or a user's own."""
    by_name = {s["metadata"]["name"]: s["spec"]["ports"] for s in all_services}
    by_name.setdefault("pgwake", [{"name": "postgres", "port": 5432}])
    return [(n, f"10.0.{100 + i}.{10 + i}", ports) for i, (n, ports) in enumerate(sorted(by_name.items()))]


def expand(text, *maps):
    """The kubelet's $(VAR) expansion: defined names are replaced, $$ is $,
    anything else is left as written."""
    out = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            end = text.index(")", i)
            name = text[i + 2:end]
            value = next((m[name] for m in maps if name in m), None)
            out.append(value if value is not None else text[i:end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def field_ref(where, path, pod):
    meta = pod["metadata"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return meta.get(m.group(1), {}).get(m.group(2), "")
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": "6f1c1f0e-2d4b-4c59-9a3e-2f0d3c7b9a10",
        "spec.nodeName": NODE_NAME,
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
    }
    if path not in values:
        problem(f"{where}: fieldRef {path} is not emulated")
        return ""
    return values[path]


def container_env(where, c, pod, configmaps, services):
    """The container's variables as the kubelet makes them (envFrom, then
    env, then service links for names not already set)."""
    env = {}
    for ef in c.get("envFrom", []):
        prefix = ef.get("prefix", "")
        if "configMapRef" in ef:
            ref = ef["configMapRef"]
            data = configmaps.get(ref["name"], {}).get("data")
            if data is None and not ref.get("optional"):
                problem(f"{where}: envFrom ConfigMap {ref['name']} is not in the manifests")
            for k, v in (data or {}).items():
                env[prefix + k] = v
        else:
            problem(f"{where}: envFrom {sorted(ef)} is not emulated")
    for e in c.get("env", []):
        name = e["name"]
        if "value" in e or "valueFrom" not in e:
            env[name] = expand(e.get("value", ""), env, services)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref(where, vf["fieldRef"]["fieldPath"], pod)
        elif "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            value = configmaps.get(ref["name"], {}).get("data", {}).get(ref["key"])
            if value is None:
                if not ref.get("optional"):
                    problem(f"{where}: {name} from ConfigMap {ref['name']} key {ref['key']}, which the manifests lack")
                continue
            env[name] = value
        else:
            problem(f"{where}: {name} valueFrom {sorted(vf)} is not emulated")
    for k, v in services.items():
        env.setdefault(k, v)
    return env


def documented_secrets(kustomization_path):
    """The Secrets a kustomization's comments say to create
    (`kubectl create secret tls NAME` or `generic NAME --from-file=F`):
    name -> {key: material kind}."""
    secrets = {}
    with open(kustomization_path, encoding="utf-8") as f:
        for line in f:
            m = re.search(r"kubectl create secret (tls|generic) (\S+)(.*)", line)
            if not m:
                continue
            kind, name, rest = m.groups()
            if kind == "tls":
                secrets[name] = {"tls.crt": "tls-cert", "tls.key": "tls-key"}
                continue
            keys = {}
            for f_arg in re.findall(r"--from-file=(\S+)", rest):
                key = f_arg.split("=", 1)[0] if "=" in f_arg else os.path.basename(f_arg)
                keys[key] = material_for(key)
            secrets[name] = keys
    return secrets


def material_for(key):
    if key.startswith("userlist"):
        return "userlist"
    if key.endswith((".crt", ".pem")):
        return "tls-cert"
    if key.endswith(".key"):
        return "tls-key"
    problem(f"no test material for a secret file named {key}")
    return "unknown"


def mount_volume(plan, where, mount, volume, configmaps, secrets):
    path = mount["mountPath"]
    sub = mount.get("subPath")
    if "configMap" in volume or "secret" in volume:
        is_cm = "configMap" in volume
        src = volume["configMap"] if is_cm else volume["secret"]
        name = src["name"] if is_cm else src["secretName"]
        if is_cm:
            keys = configmaps.get(name, {}).get("data")
        else:
            keys = secrets.get(name)
        if keys is None:
            if not src.get("optional"):
                problem(f"{where}: {'ConfigMap' if is_cm else 'Secret'} {name} is neither in the manifests nor documented")
            return
        mode = src.get("defaultMode", 0o644)
        items = src.get("items") or [{"key": k, "path": k} for k in keys]
        for item in items:
            if item["key"] not in keys:
                problem(f"{where}: {name} has no key {item['key']}")
                continue
            rel_path = item["path"]
            if sub is not None:
                if rel_path != sub:
                    continue
                dest = path
            else:
                dest = os.path.join(path, rel_path)
            value = keys[item["key"]]
            kind = "text" if is_cm else "material"
            plan.file(dest, item.get("mode", mode), "root", kind, value)
        if sub is None:
            plan.dir(path, 0o755, "root")
    elif "emptyDir" in volume:
        plan.dir(path, 0o777, "root")
    else:
        problem(f"{where}: volume {mount['name']} ({sorted(volume)}) is not emulated")


def probes(plan, where, c, kinds):
    """The probes, with named ports resolved to the container's ports."""
    named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if p.get("name")}
    for kind, probe in kinds:
        params = [probe.get("initialDelaySeconds", 0), probe.get("periodSeconds", 10),
                  probe.get("timeoutSeconds", 1), probe.get("successThreshold", 1),
                  probe.get("failureThreshold", 3)]
        if "httpGet" in probe:
            h = probe["httpGet"]
            port = named.get(h["port"], h["port"])
            if not isinstance(port, int):
                problem(f"{where}: {kind} probe port {h['port']} is not a port of the container")
                continue
            if h.get("scheme", "HTTP") != "HTTP" or h.get("host"):
                problem(f"{where}: {kind} probe: only plain HTTP to the pod is emulated")
            plan.add("probe", kind, "http", *params, port, h.get("path", "/"))
        elif "tcpSocket" in probe:
            port = named.get(probe["tcpSocket"]["port"], probe["tcpSocket"]["port"])
            plan.add("probe", kind, "tcp", *params, port)
        elif "exec" in probe:
            plan.add("probe", kind, "exec", *params, *probe["exec"]["command"])
        else:
            problem(f"{where}: {kind} probe {sorted(probe)} is not emulated")


def command_line(where, c, image):
    """ENTRYPOINT and CMD, replaced by command and args as Kubernetes and
    Container Apps do, with $(VAR) expanded."""
    command = c.get("command") or image["entrypoint"]
    args = c.get("args") if c.get("args") is not None else ([] if c.get("command") else image["cmd"])
    argv = command + args
    if not argv:
        problem(f"{where}: no command")
    return argv


def pod_clients(plan, pod_spec, c, services, svc_texts, ports):
    """Clients the manifests document: postgres URLs in the other
    containers' variables (they share the pod's loopback), and URLs in a
    Service's comments that name the Service."""
    for other in containers(pod_spec):
        if other["name"] == c["name"]:
            continue
        for e in other.get("env", []):
            if re.match(r"postgres(ql)?://", e.get("value", "")):
                add_client(plan, e["value"], None)
    for svc in services:
        name = svc["metadata"]["name"]
        for url in re.findall(r"postgres(?:ql)?://\S+", svc_texts.get(name, "")):
            host = urlsplit(url).hostname or ""
            if not host.startswith(name + "."):
                continue
            svc_port = urlsplit(url).port or 5432
            sp = next((p for p in svc["spec"]["ports"] if p["port"] == svc_port), None)
            if sp is None:
                problem(f"Service {name}: its comment's {url} uses port {svc_port}, which it lacks")
                continue
            target = sp.get("targetPort", sp["port"])
            add_client(plan, url, ports.get(target, target))


def add_client(plan, url, port):
    """A client's URL with the host made 127.0.0.1, the port {{port}} and
    placeholder credentials (USER:PASSWORD) made the test's. A host that is
    a percent-encoded directory (a unix socket's, as libpq reads it) stays
    that directory, written as the host parameter so that the test finds
    the path to rewrite."""
    parts = urlsplit(url)
    user = parts.username or ""
    password = parts.password
    if user.isupper():
        user, password = "{{client_user}}", "{{client_password}}"
    cred = user + (f":{password}" if password else "")
    port = port if port is not None else (parts.port or 5432)
    hostport = parts.netloc.rpartition("@")[2]
    host = unquote(hostport.rsplit(":", 1)[0] if ":" in hostport else hostport)
    if host.startswith("/"):
        query = f"&{parts.query}" if parts.query else ""
        plan.add("client", port, f"{parts.scheme}://{cred}@{parts.path}?host={host}&port={{{{port}}}}{query}")
        return
    query = f"?{parts.query}" if parts.query else ""
    plan.add("client", port, f"{parts.scheme}://{cred}@127.0.0.1:{{{{port}}}}{parts.path}{query}")


def kubernetes(deploy, out, image):
    base = os.path.join(deploy, "kubernetes")
    apps = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    loaded = {}
    all_services = []
    for app in apps:
        d = os.path.join(base, app)
        kust = load_yaml(os.path.join(d, "kustomization.yaml"))
        docs = []
        texts = {}
        for f in kust.get("resources", []):
            doc = load_yaml(os.path.join(d, f))
            docs.append(doc)
            if doc["kind"] == "Service":
                all_services.append(doc)
                with open(os.path.join(d, f), encoding="utf-8") as fh:
                    texts[doc["metadata"]["name"]] = fh.read()
        loaded[app] = (kust, docs, texts)
    linked = cluster_services(all_services)

    for app in apps:
        kust, docs, svc_texts = loaded[app]
        ns = kust.get("namespace", "default")
        secrets = documented_secrets(os.path.join(base, app, "kustomization.yaml"))
        by_kind = {}
        for doc in docs:
            by_kind.setdefault(doc["kind"], []).append(doc)
        configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
        accounts = {s["metadata"]["name"]: s for s in by_kind.get("ServiceAccount", [])}
        for workload in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []) + by_kind.get("DaemonSet", []):
            template = workload["spec"]["template"]
            spec = template["spec"]
            wname = workload["metadata"]["name"]
            pod = {
                "metadata": {
                    "name": f"{wname}-7c9d8f6b5d-x2x7q",
                    "namespace": ns,
                    "labels": template.get("metadata", {}).get("labels", {}),
                    "annotations": template.get("metadata", {}).get("annotations", {}),
                },
                "spec": spec,
            }
            selecting = [s for s in by_kind.get("Service", [])
                         if s["spec"].get("selector", {}).items() <= pod["metadata"]["labels"].items()]
            services = service_env(([MASTER_SERVICE] + linked) if spec.get("enableServiceLinks", True)
                                   else [MASTER_SERVICE])
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            account = accounts.get(spec.get("serviceAccountName", "default"), {"metadata": {}})
            for c in containers(spec):
                if not is_pgwake(c):
                    continue
                if c in spec.get("initContainers", []) and c.get("restartPolicy") != "Always":
                    problem(f"deploy/kubernetes/{app}: pgwake as an init container that must exit")
                    continue
                where = f"deploy/kubernetes/{app}: {workload['kind']} {wname}, container {c['name']}"
                plan = Plan(f"kubernetes-{app}-{wname}-{c['name']}", f"deploy/kubernetes/{app}")
                c = workload_identity_webhook(where, c, pod, account)
                image_files(plan, deploy, image)
                env = dict(image["env"])
                # containerd sets HOSTNAME; a pod's HOME is / unless the image says.
                env["HOSTNAME"] = pod["metadata"]["name"]
                env.setdefault("HOME", "/")
                kenv = container_env(where, c, pod, configmaps, services)
                env.update(kenv)
                plan.add("argv", *[expand(a, kenv) for a in command_line(where, c, image)])
                for k, v in env.items():
                    plan.add("env", k, v)
                for m in c.get("volumeMounts", []):
                    if m["name"] == "azure-identity-token":
                        continue
                    if m["name"] not in volumes:
                        problem(f"{where}: mounts volume {m['name']}, which the pod lacks")
                        continue
                    mount_volume(plan, where, m, volumes[m["name"]], configmaps, secrets)
                if "azure-identity-token" in [m["name"] for m in c.get("volumeMounts", [])]:
                    # The projected token: the container's user owns it (the
                    # kubelet does so when every container runs as one user).
                    plan.file(WI_TOKEN_PATH, 0o600, "user", "material", "federated-token")
                if spec.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True)):
                    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
                    plan.file(sa_dir + "/token", 0o644, "root", "material", "federated-token")
                    plan.file(sa_dir + "/ca.crt", 0o644, "root", "material", "ca-bundle")
                    plan.file(sa_dir + "/namespace", 0o644, "root", "text", ns)
                sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
                uid, gid = image_user(image) or (0, 0)
                uid = sc.get("runAsUser", uid)
                gid = sc.get("runAsGroup", gid)
                if sc.get("runAsNonRoot") and uid == 0:
                    problem(f"{where}: runAsNonRoot, but it would run as root")
                plan.add("user", uid, gid)
                if sc.get("allowPrivilegeEscalation") is False:
                    plan.add("nonewprivs")
                probes(plan, where, c, [(k, c[k]) for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c])
                sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
                if sleep:
                    plan.add("prestop", sleep)
                elif c.get("lifecycle", {}).get("preStop"):
                    problem(f"{where}: preStop {sorted(c['lifecycle']['preStop'])} is not emulated")
                plan.add("grace", spec.get("terminationGracePeriodSeconds", 30))
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if p.get("name")}
                pod_clients(plan, spec, c, selecting, svc_texts, ports)
                plan.write(out)


def workload_identity_webhook(where, c, pod, account):
    """What Azure workload identity's webhook adds to a container of a pod
    labelled azure.workload.identity/use: "true" (init containers too):
    AZURE_CLIENT_ID from the service account's annotation, the tenant and
    authority host from the cluster's configuration (the test's), the
    token file's path, and its projected volume."""
    if pod["metadata"]["labels"].get("azure.workload.identity/use") != "true":
        return c
    skip = pod["metadata"]["annotations"].get("azure.workload.identity/skip-containers", "")
    if c["name"] in skip.split(";"):
        return c
    notes = account["metadata"].get("annotations", {})
    client_id = notes.get("azure.workload.identity/client-id")
    if not client_id:
        problem(f"{where}: the service account has no azure.workload.identity/client-id")
    injected = {
        "AZURE_CLIENT_ID": client_id or "",
        "AZURE_TENANT_ID": notes.get("azure.workload.identity/tenant-id", "{{tenant_id}}"),
        "AZURE_FEDERATED_TOKEN_FILE": WI_TOKEN_PATH,
        "AZURE_AUTHORITY_HOST": "{{authority_host}}",
    }
    c = dict(c)
    have = {e["name"] for e in c.get("env", [])}
    c["env"] = list(c.get("env", [])) + [{"name": k, "value": v} for k, v in injected.items() if k not in have]
    c["volumeMounts"] = list(c.get("volumeMounts", [])) + [
        {"name": "azure-identity-token", "mountPath": WI_TOKEN_DIR, "readOnly": True}]
    return c


# --- Azure Container Apps ------------------------------------------------


def containerapp(deploy, out, image):
    path = os.path.join(deploy, "azure", "containerapp.yaml")
    source = os.path.relpath(path, os.path.dirname(deploy))
    app = load_yaml(path)
    with open(path, encoding="utf-8") as f:
        m = re.search(r"az containerapp create .*--name (\S+)", f.read().replace("\\\n", " "))
    name = m.group(1) if m else "app"
    props = app["properties"]
    template = props["template"]
    config = props.get("configuration", {})
    secrets = {s["name"]: s for s in config.get("secrets", [])}
    identity = app.get("identity", {}).get("type", "None")
    revision = f"{name}--0000001"
    replica = f"{revision}-7d4b9c8f6-x2x7q"
    # Documented built-in variables; a managed identity adds its endpoint.
    platform = {
        "CONTAINER_APP_NAME": name,
        "CONTAINER_APP_REVISION": revision,
        "CONTAINER_APP_REPLICA_NAME": replica,
        "CONTAINER_APP_ENV_DNS_SUFFIX": "happyhill-12345678.westeurope.azurecontainerapps.io",
        "CONTAINER_APP_HOSTNAME": f"{revision}.happyhill-12345678.westeurope.azurecontainerapps.io",
    }
    if config.get("ingress", {}).get("targetPort"):
        platform["CONTAINER_APP_PORT"] = str(config["ingress"]["targetPort"])
    if identity != "None":
        platform["IDENTITY_ENDPOINT"] = "{{identity_endpoint}}"
        platform["IDENTITY_HEADER"] = "{{identity_header}}"
    # Container Apps run on Kubernetes and offer no enableServiceLinks: the
    # API server's variables are there, and links for the environment's
    # apps (this one, and one named pgwake) are assumed as the worst case.
    services = [MASTER_SERVICE] + [
        (n, f"10.0.{200 + i}.{10 + i}", [{"name": "http", "port": 80}])
        for i, n in enumerate(sorted({name, "pgwake"}))]
    found = False
    for c in template["containers"]:
        if not is_pgwake(c):
            continue
        found = True
        where = f"{source}: container {c['name']}"
        plan = Plan(f"azure-containerapp-{c['name']}", source)
        image_files(plan, deploy, image)
        env = dict(image["env"])
        env["HOSTNAME"] = replica
        env.setdefault("HOME", "/")
        env.update(service_env(services))
        env.update(platform)
        for e in c.get("env", []):
            if "secretRef" in e:
                s = secrets.get(e["secretRef"])
                if s is None or "value" not in s:
                    problem(f"{where}: {e['name']} refers to secret {e['secretRef']}, which has no value here")
                    continue
                env[e["name"]] = s["value"]
            else:
                env[e["name"]] = e.get("value", "")
        plan.add("argv", *command_line(where, c, image))
        for k, v in env.items():
            plan.add("env", k, v)
        volumes = {v["name"]: v for v in template.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["volumeName"], {})
            if v.get("storageType") == "EmptyDir":
                plan.dir(m["mountPath"], 0o777, "root")
            else:
                problem(f"{where}: volume {m['volumeName']} ({v.get('storageType')}) is not emulated")
        uid, gid = image_user(image) or (0, 0)
        plan.add("user", uid, gid)
        kinds = {"Startup": "startupProbe", "Readiness": "readinessProbe", "Liveness": "livenessProbe"}
        probes(plan, where, c, [(kinds[p["type"]], p) for p in c.get("probes", [])])
        plan.add("grace", template.get("terminationGracePeriodSeconds", 30))
        for other in template["containers"]:
            if other is c:
                continue
            for e in other.get("env", []):
                if re.match(r"postgres(ql)?://", e.get("value", "")):
                    add_client(plan, e["value"], None)
        plan.write(out)
    if not found:
        problem(f"{source}: no pgwake container")


# --- systemd -------------------------------------------------------------


def systemd(deploy, out):
    path = os.path.join(deploy, "systemd", "pgwake.service")
    source = os.path.relpath(path, os.path.dirname(deploy))
    unit = {}
    installs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"#\s+install\s+(.*?)(?:#.*)?$", line)
            if m:
                installs.append(shlex.split(m.group(1)))
            if line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            k, v = line.strip().split("=", 1)
            unit.setdefault(k, []).append(v)

    def last(key, default=None):
        return unit.get(key, [default])[-1]

    plan = Plan("systemd-pgwake", source)
    repo = os.path.dirname(deploy)
    # The files the install comment puts in place, as it puts them.
    for words in installs:
        mode = 0o644
        args = []
        i = 0
        while i < len(words):
            if words[i] == "-m":
                mode = int(words[i + 1], 8)
                i += 2
            elif words[i].startswith("-"):
                i += 1
            else:
                args.append(words[i])
                i += 1
        src, dst = args[0], args[-1]
        if dst.endswith("/"):
            dst += os.path.basename(src)
        if src == "pgwake":
            plan.add("binary", dst)
            plan.file(dst, mode, "root", "material", "pgwake-binary")
        elif dst.startswith("/etc/systemd/"):
            continue
        else:
            with open(os.path.join(repo, src), encoding="utf-8") as f:
                plan.file(dst, mode, "root", "text", f.read())
    argv = shlex.split(last("ExecStart").lstrip("-@+!:"))
    plan.add("argv", *argv)
    service_user = last("User")
    dynamic = last("DynamicUser", "no") in ("yes", "true", "1")
    name = os.path.splitext(os.path.basename(path))[0]
    env = {"PATH": SYSTEMD_PATH}
    if dynamic or service_user:
        who = service_user or name
        env.update({"USER": who, "LOGNAME": who, "HOME": "/", "SHELL": "/usr/sbin/nologin"})
        plan.add("user", "dynamic" if dynamic else who, who)
    for kind, var in (("RuntimeDirectory", "RUNTIME_DIRECTORY"), ("ConfigurationDirectory", "CONFIGURATION_DIRECTORY")):
        dirs = []
        for d in " ".join(unit.get(kind, [])).split():
            base = "/run" if kind == "RuntimeDirectory" else "/etc"
            full = f"{base}/{d}"
            mode = int(last(kind + "Mode", "0755"), 8)
            # The service's user owns the runtime directory; /etc stays root's.
            plan.dir(full, mode, "user" if kind == "RuntimeDirectory" else "root")
            dirs.append(full)
        if dirs:
            env[var] = ":".join(dirs)
    for assignment in unit.get("Environment", []):
        for pair in shlex.split(assignment):
            k, _, v = pair.partition("=")
            env[k] = v
    for ef in unit.get("EnvironmentFile", []):
        optional = ef.startswith("-")
        ef = ef.lstrip("-")
        if not optional:
            problem(f"{source}: EnvironmentFile={ef} is required, and deploy/ has no such file")
    for k, v in env.items():
        plan.add("env", k, v)
    if last("UMask"):
        plan.add("umask", last("UMask"))
    if last("LimitNOFILE"):
        plan.add("nofile", last("LimitNOFILE"))
    if last("NoNewPrivileges", "no") in ("yes", "true", "1"):
        plan.add("nonewprivs")
    if last("ExecReload"):
        plan.add("reload", *shlex.split(last("ExecReload").lstrip("-@+!:")))
    stop = last("TimeoutStopSec", last("TimeoutSec", "90s"))
    m = re.fullmatch(r"(\d+)(s|min)?", stop)
    if not m:
        problem(f"{source}: TimeoutStopSec={stop} is not understood")
    else:
        plan.add("grace", int(m.group(1)) * (60 if m.group(2) == "min" else 1))
    # The client the config documents, `psql -h DIR -p PORT` as written: run
    # by an app's OS user named as the config's client user, psql's user and
    # database default to that name.
    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    text = next((ln[-1] for ln in plan.lines if ln[0] == "file" and ln[1] == config), None)
    m = re.search(r"psql -h (\S+) -p (\d+)", text or "")
    if not m:
        problem(f"{source}: its config documents no psql command for the unix socket")
    else:
        auth = tomllib.loads(text).get("server", {}).get("auth", {})
        user = (auth.get("client_users") or [auth.get("user", "postgres")])[0]
        plan.add("client", m.group(2), f"postgresql://?host={m.group(1)}&port={{{{port}}}}")
        plan.add("clientuser", user)
    plan.write(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--deploy", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    opts = ap.parse_args()
    os.makedirs(opts.out, exist_ok=True)
    deploy = os.path.abspath(opts.deploy)
    image = dockerfile(deploy)
    if image:
        kubernetes(deploy, opts.out, image)
        containerapp(deploy, opts.out, image)
    systemd(deploy, opts.out)
    if PROBLEMS:
        print("\n".join(PROBLEMS), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
