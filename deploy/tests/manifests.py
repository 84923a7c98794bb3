"""Static checks of deploy/: every file parses, every reference resolves, and every name the
files use (variables, metrics, labels, table columns, states) is one the code defines.

Run by deploy/tests/run.sh; prints one `ok NAME` or `not ok NAME: why` line per check.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
FORBIDDEN = "change" + "-me"  # spelled apart so this file passes its own check

CHECKS: list[tuple[str, Callable[[], list[str]]]] = []


def check(fn: Callable[[], list[str]]) -> Callable[[], list[str]]:
    CHECKS.append((fn.__name__.replace("_", "-"), fn))
    return fn


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(read(path)) if d is not None]


# ---------------------------------------------------------------------------------------------
# What the code defines
# ---------------------------------------------------------------------------------------------


def config_env_vars() -> set[str]:
    """TUNA_* variables read by tuna-config (ENV_VARS) or by clap (`env = "..."`)."""
    src = read(REPO / "config/src/lib.rs")
    table = src[src.index("pub const ENV_VARS") :]
    table = table[: table.index("];")]
    names = set(re.findall(r'"(TUNA_[A-Z0-9_]+)"', table))
    for rs in (REPO / "cli/src").rglob("*.rs"):
        names |= set(re.findall(r'env\s*=\s*"(TUNA_[A-Z0-9_]+)"', read(rs)))
    return names


def exported_metrics() -> tuple[set[str], set[str]]:
    """Series names server/src/prometheus.rs exports (with the suffixes of each metric type),
    and the label names of its label sets."""
    src = read(REPO / "server/src/prometheus.rs")
    prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', src)
    assert prefix, "Registry::with_prefix not found in prometheus.rs"
    names: set[str] = set()
    for name, var in re.findall(r'registry\.register\(\s*"([a-z_]+)",\s*"[^"]*",\s*(\w+)\.clone\(\)', src):
        decl = re.search(rf"let {var}\b[^;]*;", src)
        assert decl, f"no declaration of {var}"
        d = decl.group(0)
        base = f"{prefix.group(1)}_{name}"
        if "Counter" in d:
            names |= {f"{base}_total", f"{base}_created"}
        elif "Gauge" in d:
            names.add(base)
        elif "Histogram" in d or "latency()" in d or "durations()" in d:
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        else:
            raise AssertionError(f"unknown metric type of {name}: {d}")
    labels = {"le", "instance", "job"}
    for body in re.findall(r"derive\([^)]*EncodeLabelSet[^)]*\)\]\s*(?:pub(?:\(crate\))? )?struct \w+ \{([^}]*)\}", src):
        labels |= set(re.findall(r"(\w+)\s*:", body))
    return names, labels


def job_states() -> set[str]:
    sql = read(REPO / "migrations/postgres/0001_init.sql")
    m = re.search(r"jobs_state_valid CHECK \(state IN \(([^)]*)\)\)", sql)
    assert m, "jobs_state_valid not found"
    return set(re.findall(r"'([a-z_]+)'", m.group(1)))


def devices() -> set[str]:
    src = read(REPO / "spec/src/names.rs")
    m = re.search(r"\bDevice \{([^}]*)\}", src)
    assert m, "Device not found in spec/src/names.rs"
    return set(re.findall(r'"([a-z]+)"', m.group(1)))


TONIC_CODES = {
    "Ok", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}  # fmt: skip


def table_columns() -> dict[str, set[str]]:
    """Columns of every table after all PostgreSQL migrations."""
    tables: dict[str, set[str]] = {}
    for path in sorted((REPO / "migrations/postgres").glob("*.sql")):
        sql = re.sub(r"--[^\n]*", "", read(path))
        for name, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", sql, re.S):
            cols = tables.setdefault(name, set())
            for line in body.split(",\n"):
                word = line.strip().split()[0] if line.strip() else ""
                if re.fullmatch(r"[a-z_][a-z0-9_]*", word):
                    cols.add(word)
        for name, col in re.findall(r"ALTER TABLE (\w+)\s+ADD COLUMN (?:IF NOT EXISTS )?(\w+)", sql):
            tables.setdefault(name, set()).add(col)
    return tables


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


@check
def yaml_parses() -> list[str]:
    errors = []
    for p in yaml_files():
        try:
            if not load_all(p):
                errors.append(f"{p.relative_to(REPO)} is empty")
        except yaml.YAMLError as e:
            errors.append(f"{p.relative_to(REPO)}: {e}")
    return errors


@check
def no_placeholder_secrets() -> list[str]:
    paths = [p for p in DEPLOY.rglob("*") if p.is_file()]
    paths += [REPO / ".dockerignore", REPO / "docs/deploy.md"]
    return [
        f"{p.relative_to(REPO)} contains {FORBIDDEN!r}"
        for p in paths
        if p.exists() and FORBIDDEN in read(p).lower()
    ]


@check
def tuna_variables_exist() -> list[str]:
    """Every TUNA_* variable the deploy files set is one tuna reads."""
    known = config_env_vars()
    errors = []
    for p in [*yaml_files(), DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda", DEPLOY / "tuna-ready"]:
        text = read(p)
        used = set(re.findall(r"^\s*-?\s*\{?\s*(?:name:\s*)?(TUNA_[A-Z0-9_]+)\b", text, re.M))
        used |= set(re.findall(r"\b(TUNA_[A-Z0-9_]+)=", text))
        used |= set(re.findall(r"^\s+(TUNA_[A-Z0-9_]+):", text, re.M))
        for var in sorted(used - known - {"TUNA_IMAGE"}):
            errors.append(f"{p.relative_to(REPO)} sets {var}, which tuna does not read")
    return errors


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name (continuation lines joined, comments dropped)."""
    lines, buf = [], ""
    for raw in read(path).splitlines():
        if raw.lstrip().startswith("#") and not buf:
            continue
        if raw.lstrip().startswith("#"):
            continue
        buf += raw.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in lines:
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m
            current = stages.setdefault(m.group(2) or f"stage{len(stages)}", [])
            current.append(("FROM", m.group(1)))
        elif current is not None:
            current.append((op.upper(), rest))
    return stages


def stage_chain(stages: dict[str, list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """A stage's instructions after those of the stages it is built FROM."""
    own = stages[name]
    base = own[0][1]
    return (stage_chain(stages, base) if base in stages else []) + own


def dockerignore_excludes(rel: str) -> bool:
    for pat in read(REPO / ".dockerignore").splitlines():
        pat = pat.strip().rstrip("/")
        if not pat or pat.startswith("#"):
            continue
        plain = pat.removeprefix("**/")
        if rel == plain or rel.startswith(plain + "/"):
            return True
    return False


@check
def dockerfiles() -> list[str]:
    errors = []
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", read(REPO / "Cargo.toml"))
    assert members
    needed = set(re.findall(r'"([^"]+)"', members.group(1))) | {"migrations", "examples"}
    for name, finals in (("Dockerfile", ("server", "worker")), ("Dockerfile.cuda", ("worker",))):
        path = DEPLOY / name
        stages = dockerfile_stages(path)
        copied = {rest.split()[0] for op, rest in stages.get("build", []) if op == "COPY"}
        for m in sorted(needed - copied):
            errors.append(f"{name}: the build stage does not copy {m}/ (a workspace member)")
        for stage in stages.values():
            for op, rest in stage:
                if op == "COPY" and "--from" not in rest:
                    for src in [a for a in rest.split()[:-1] if not a.startswith("--")]:
                        if not (REPO / src).exists():
                            errors.append(f"{name}: COPY {src}: no such path in the context")
                        elif dockerignore_excludes(src.rstrip("/")):
                            errors.append(f"{name}: COPY {src}: excluded by .dockerignore")
        for final in finals:
            if final not in stages:
                errors.append(f"{name}: no stage {final!r}")
                continue
            chain = stage_chain(stages, final)
            last = lambda op: next((r for o, r in reversed(chain) if o == op), None)  # noqa: E731
            env = dict(re.findall(r"(\w+)=(\S+)", " ".join(r for o, r in chain if o == "ENV")))
            if (last("USER") or "").split(":")[0] != "10001":
                errors.append(f"{name}:{final}: USER is {last('USER')}, not 10001")
            if last("ENTRYPOINT") != '["tuna"]':
                errors.append(f"{name}:{final}: ENTRYPOINT is {last('ENTRYPOINT')}")
            data = env.get("TUNA_DATA_DIR")
            runs = " ".join(r for o, r in chain if o == "RUN")
            if not data or not re.search(rf"install -d [^&]*-o 10001 [^&]*{re.escape(data)}\b", runs):
                errors.append(f"{name}:{final}: TUNA_DATA_DIR={data} is not created owned by 10001")
            if not env.get("TUNA_WORKER_CACHE_DIR", "").startswith(f"{data}/"):
                errors.append(f"{name}:{final}: the worker cache is not under the data dir")
            if final == "server":
                exposed = set((last("EXPOSE") or "").split())
                for var in ("TUNA_LISTEN", "TUNA_METRICS_LISTEN"):
                    port = env.get(var, ":").rsplit(":", 1)[1]
                    if port not in exposed:
                        errors.append(f"{name}:{final}: {var} port {port} is not EXPOSEd")
    for pattern in (".git", "target/", ".cache/", "**/node_modules/", "tests/browser/out/"):
        if pattern not in read(REPO / ".dockerignore").split():
            errors.append(f".dockerignore lacks {pattern}")
    return errors


# ---------------------------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------------------------


@check
def compose_references() -> list[str]:
    path = DEPLOY / "compose.yaml"
    (doc,) = load_all(path)
    services: dict[str, Any] = doc["services"]
    errors = []
    for kind in ("volumes", "configs", "secrets"):
        for name, spec in (doc.get(kind) or {}).items():
            if spec and "file" in spec and not (DEPLOY / spec["file"]).exists():
                errors.append(f"{kind} {name}: file {spec['file']} is missing")
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        deps = {d: {} for d in deps} if isinstance(deps, list) else deps
        for dep, cond in deps.items():
            if dep not in services:
                errors.append(f"{name} depends on unknown service {dep}")
                continue
            c = (cond or {}).get("condition", "service_started")
            if c == "service_healthy" and "healthcheck" not in services[dep]:
                errors.append(f"{name} waits for {dep} to be healthy; {dep} has no healthcheck")
            if c == "service_completed_successfully" and services[dep].get("restart", "no") != "no":
                errors.append(f"{name} waits for {dep} to complete; {dep} restarts")
            if c not in ("service_started", "service_healthy", "service_completed_successfully"):
                errors.append(f"{name}: unknown condition {c}")
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src and not src.startswith((".", "/")) and src not in (doc.get("volumes") or {}):
                errors.append(f"{name}: volume {src} is not declared")
        for kind in ("configs", "secrets"):
            for ref in svc.get(kind) or []:
                src = ref if isinstance(ref, str) else ref["source"]
                if src not in (doc.get(kind) or {}):
                    errors.append(f"{name}: {kind[:-1]} {src} is not declared")
        for f in [svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file") or []:
            if not (DEPLOY / (f if isinstance(f, str) else f["path"])).exists():
                errors.append(f"{name}: env_file {f} is missing")
        build = svc.get("build")
        if build:
            ctx = (DEPLOY / build["context"]).resolve()
            dockerfile = ctx / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                errors.append(f"{name}: no {dockerfile}")
            elif build.get("target") and build["target"] not in dockerfile_stages(dockerfile):
                errors.append(f"{name}: {dockerfile.name} has no stage {build['target']}")
    servers = [s for s in services.values() if (s.get("build") or {}).get("target") == "server"]
    workers = [s for s in services.values() if (s.get("build") or {}).get("target") == "worker"]
    if len(servers) < 2 or len(workers) < 2:
        errors.append(f"{len(servers)} server and {len(workers)} worker services, wanted 2 each")
    if len({(s["environment"]["TUNA_DATABASE_URL"], s["environment"]["TUNA_BLOB_URL"]) for s in servers}) != 1:
        errors.append("the server replicas do not share one database and one bucket")
    if any("minio" in str(s.get("image", "")).lower() for s in services.values()):
        errors.append("MinIO is AGPL; use a permissively licensed S3 server")
    return errors


@check
def compose_secrets() -> list[str]:
    """Secrets come from ${VAR:?...} (deploy/.env, written by gen-env.sh), never literals."""
    text = read(DEPLOY / "compose.yaml")
    (doc,) = load_all(DEPLOY / "compose.yaml")
    secret_keys = ("TUNA_API_KEY", "TUNA_WORKER_TOKEN", "POSTGRES_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                   "ROOT_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "ROOT_ACCESS_KEY_ID")  # fmt: skip
    errors = []
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        for key in secret_keys:
            if key in env and not re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(env[key])):
                errors.append(f"{name}: {key} is not a required ${{VAR:?...}} variable")
        url = env.get("TUNA_DATABASE_URL", "")
        if url and not re.search(r":\$\{\w+:\?[^}]+\}@", url):
            errors.append(f"{name}: the database password is not a required variable")
    required = set(re.findall(r"\$\{(\w+):\?", text))
    generated = set(re.findall(r"^(\w+)=", read(DEPLOY / "gen-env.sh"), re.M))
    for var in sorted(required - generated):
        errors.append(f"compose.yaml requires {var}; gen-env.sh does not write it")
    return errors


@check
def otel_collector_config() -> list[str]:
    (doc,) = load_all(DEPLOY / "otel-collector.yaml")
    errors = []
    if "grpc" not in doc["receivers"].get("otlp", {}).get("protocols", {}):
        errors.append("no OTLP gRPC receiver")
    for ext in doc["service"].get("extensions", []):
        if ext not in doc.get("extensions", {}):
            errors.append(f"extension {ext} is not defined")
    for name, pipe in doc["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for c in pipe.get(kind, []):
                if c not in doc.get(kind, {}):
                    errors.append(f"pipeline {name}: {kind[:-1]} {c} is not defined")
    port = doc["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    (compose,) = load_all(DEPLOY / "compose.yaml")
    for name, svc in compose["services"].items():
        ep = (svc.get("environment") or {}).get("TUNA_OTLP_ENDPOINT")
        if ep and ep != f"http://otel-collector:{port}":
            errors.append(f"{name}: TUNA_OTLP_ENDPOINT {ep} is not the collector's receiver")
    return errors


@check
def prometheus_targets() -> list[str]:
    (doc,) = load_all(DEPLOY / "prometheus.yml")
    (compose,) = load_all(DEPLOY / "compose.yaml")
    (otel,) = load_all(DEPLOY / "otel-collector.yaml")
    ports = {"otel-collector": otel["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]}
    image_env = dict(re.findall(r"(\w+)=(\S+)", read(DEPLOY / "Dockerfile")))
    errors = []
    for job in doc["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                svc = compose["services"].get(host)
                if svc is None:
                    errors.append(f"{job['job_name']}: {host} is not a compose service")
                    continue
                want = ports.get(host) or image_env["TUNA_METRICS_LISTEN"].rsplit(":", 1)[1]
                if port != want:
                    errors.append(f"{job['job_name']}: {target}: the metrics port is {want}")
    return errors


# ---------------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    objs = []
    for p in sorted(K8S.glob("*.yaml")):
        for d in load_all(p):
            if d.get("kind") != "Kustomization":
                d["_file"] = p.name
                objs.append(d)
    return objs


def walk(node: Any, key: str) -> list[Any]:
    """Every value under `key`, anywhere in `node`."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += walk(v, key)
    elif isinstance(node, list):
        for v in node:
            found += walk(v, key)
    return found


def generated_secrets() -> dict[str, set[str]]:
    """Secrets of the kustomization's secretGenerator, with their keys (from tuna.env.example)."""
    (kust,) = load_all(K8S / "kustomization.yaml")
    out = {}
    for gen in kust.get("secretGenerator", []):
        keys: set[str] = set()
        for env in gen.get("envs", []):
            example = K8S / f"{env}.example"
            for line in read(example).splitlines():
                if line.strip() and not line.startswith("#"):
                    k, _, v = line.partition("=")
                    keys.add(k.strip())
                    if v.strip():
                        raise AssertionError(f"{example.name}: {k} has a value; the example must not")
        keys |= {lit.split("=")[0] for lit in gen.get("literals", [])}
        out[gen["name"]] = keys
    return out


@check
def k8s_kustomization() -> list[str]:
    (kust,) = load_all(K8S / "kustomization.yaml")
    errors = []
    listed = set(kust["resources"])
    for p in K8S.glob("*.yaml"):
        if p.name != "kustomization.yaml" and p.name not in listed:
            errors.append(f"{p.name} is not in kustomization.yaml's resources")
    for r in listed:
        if not (K8S / r).exists():
            errors.append(f"kustomization.yaml lists missing {r}")
    if not kust.get("generatorOptions", {}).get("disableNameSuffixHash"):
        errors.append("generated Secret names get a hash suffix KEDA's references would miss")
    for gen in kust.get("secretGenerator", []):
        for env in gen.get("envs", []):
            if not (K8S / f"{env}.example").exists():
                errors.append(f"secretGenerator {gen['name']}: no {env}.example documents its keys")
            ignored = (K8S / ".gitignore").exists() and env in read(K8S / ".gitignore").split()
            if not ignored:
                errors.append(f"{env} (secret values) is not git-ignored")
    images = {i["name"] for i in kust.get("images", [])}
    for obj in k8s_objects():
        for img in walk(obj, "image"):
            if img.split(":")[0] not in images:
                errors.append(f"{obj['_file']}: image {img} is not set by kustomization images")
    return errors


@check
def k8s_references() -> list[str]:
    objs = k8s_objects()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    secrets = {name: set((o.get("data") or {}) | (o.get("stringData") or {})) for name, o in by_kind.get("Secret", {}).items()}
    secrets.update(generated_secrets())
    configmaps = {name: set(o.get("data") or {}) for name, o in by_kind.get("ConfigMap", {}).items()}
    errors = []

    def need(kind: str, table: dict[str, Any], name: str, where: str, key: str | None = None) -> None:
        if name not in table:
            errors.append(f"{where}: {kind} {name} is not defined in deploy/k8s")
        elif key is not None and key not in table[name]:
            errors.append(f"{where}: {kind} {name} has no key {key}")

    for o in objs:
        where = f"{o['_file']}:{o['kind']}/{o['metadata']['name']}"
        for ref in walk(o, "secretKeyRef"):
            need("Secret", secrets, ref["name"], where, ref["key"])
        for ref in walk(o, "secretRef"):
            need("Secret", secrets, ref["name"], where)
        for ref in walk(o, "configMapKeyRef"):
            need("ConfigMap", configmaps, ref["name"], where, ref["key"])
        for ref in walk(o, "configMapRef"):
            need("ConfigMap", configmaps, ref["name"], where)
        for ref in walk(o, "persistentVolumeClaim"):
            need("PersistentVolumeClaim", by_kind.get("PersistentVolumeClaim", {}), ref["claimName"], where)
        for name in walk(o, "serviceAccountName"):
            need("ServiceAccount", by_kind.get("ServiceAccount", {}), name, where)
        for ref in walk(o, "secretTargetRef"):
            for r in ref:
                need("Secret", secrets, r["name"], where, r["key"])
        if o["kind"] == "ScaledObject":
            target = o["spec"]["scaleTargetRef"]
            need(target.get("kind", "Deployment"), by_kind.get(target.get("kind", "Deployment"), {}), target["name"], where)
            for t in o["spec"]["triggers"]:
                if "authenticationRef" in t:
                    need("TriggerAuthentication", by_kind.get("TriggerAuthentication", {}), t["authenticationRef"]["name"], where)
    deployments = by_kind.get("Deployment", {})
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in d["spec"]["selector"]["matchLabels"].items()):
            errors.append(f"Deployment {name}: the selector does not match the pod labels")
    for kind in ("Service", "PodDisruptionBudget"):
        for name, s in by_kind.get(kind, {}).items():
            sel = s["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            pods = [d for d in deployments.values() if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            if not pods:
                errors.append(f"{kind} {name}: the selector matches no Deployment's pods")
            if kind == "Service":
                named = {p.get("name") for d in pods for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                numbers = {p["containerPort"] for d in pods for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                for port in s["spec"]["ports"]:
                    t = port.get("targetPort", port["port"])
                    if t not in named and t not in numbers:
                        errors.append(f"Service {name}: targetPort {t} is no container port")
    for name, d in deployments.items():
        for c in d["spec"]["template"]["spec"]["containers"]:
            ports = {p["containerPort"] for p in c.get("ports", [])} | {p.get("name") for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for how in (c.get(probe) or {}).values():
                    if isinstance(how, dict) and "port" in how and how["port"] not in ports:
                        errors.append(f"Deployment {name}: {probe} port {how['port']} is no container port")
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"] for v in d["spec"]["template"]["spec"].get("volumes", [])}
            for m in sorted(mounts - volumes):
                errors.append(f"Deployment {name}: volumeMount {m} has no volume")
    return errors


@check
def k8s_shape() -> list[str]:
    """What the service needs of its Deployments: replicas without a shared disk, gRPC probes
    on the right health services, GPU workers with a GPU and time to drain, uid 10001."""
    deps = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "Deployment"}
    errors = []
    server = deps.get("tuna-server")
    if not server:
        return ["no tuna-server Deployment"]
    spec = server["spec"]["template"]["spec"]
    if server["spec"]["replicas"] < 2:
        errors.append("tuna-server has fewer than 2 replicas")
    if walk(spec, "persistentVolumeClaim"):
        errors.append("tuna-server mounts a PersistentVolumeClaim (blobs belong in S3)")
    (c,) = spec["containers"]
    env = {e["name"] for e in c.get("env", [])}
    cm = next(o for o in k8s_objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "tuna")
    if not str(cm["data"].get("TUNA_BLOB_URL", "")).startswith("s3://"):
        errors.append("the ConfigMap's TUNA_BLOB_URL is not an s3:// URL")
    for var in ("TUNA_API_KEY", "TUNA_WORKER_TOKEN", "TUNA_DATABASE_URL"):
        if var not in env:
            errors.append(f"tuna-server does not set {var} from the Secret")
    if c.get("readinessProbe", {}).get("grpc", {}).get("service") != "tuna.v1.JobService":
        errors.append("the readiness probe is not grpc service tuna.v1.JobService")
    if c.get("livenessProbe", {}).get("grpc", {}).get("service", "") != "":
        errors.append('the liveness probe is not grpc service ""')
    for name, d in deps.items():
        pod = d["spec"]["template"]["spec"]
        if pod.get("securityContext", {}).get("runAsUser") != 10001:
            errors.append(f"{name} does not run as uid 10001")
        if name.startswith("tuna-worker"):
            if pod.get("terminationGracePeriodSeconds", 30) < 300:
                errors.append(f"{name}: terminationGracePeriodSeconds is too short to drain")
            envs = {e["name"]: e for e in pod["containers"][0]["env"]}
            if envs.get("TUNA_SERVER", {}).get("value", "").split("//")[-1].split(":")[0] != "tuna-server":
                errors.append(f"{name}: TUNA_SERVER is not the tuna-server Service")
    gpu = deps.get("tuna-worker-gpu")
    if not gpu:
        errors.append("no tuna-worker-gpu Deployment")
    else:
        (c,) = gpu["spec"]["template"]["spec"]["containers"]
        if str(c["resources"]["limits"].get("nvidia.com/gpu")) != "1":
            errors.append("tuna-worker-gpu does not limit nvidia.com/gpu to 1")
        if {e["name"]: e.get("value") for e in c["env"]}.get("TUNA_WORKER_DEVICE") != "cuda":
            errors.append("tuna-worker-gpu is not TUNA_WORKER_DEVICE=cuda")
    if "tuna-worker-cpu" not in deps:
        errors.append("no tuna-worker-cpu Deployment")
    return errors


def keda_query() -> str:
    so = next(o for o in k8s_objects() if o["kind"] == "ScaledObject")
    (t,) = [t for t in so["spec"]["triggers"] if t["type"] == "postgresql"]
    return t["metadata"]["query"]


@check
def keda_query_names() -> list[str]:
    """The scaling query names real tables, columns, states and devices."""
    q = keda_query()
    tables = table_columns()
    errors = []
    aliases = {a: t for t, a in re.findall(r"(?:FROM|JOIN)\s+(\w+)\s+(\w+)", q)}
    for alias, col in re.findall(r"\b(\w+)\.(\w+)\b", q):
        table = aliases.get(alias)
        if table not in tables:
            errors.append(f"{alias}.{col}: unknown table {table}")
        elif col not in tables[table]:
            errors.append(f"{table}.{col}: no such column")
    states, devs = job_states(), devices()
    for lit in re.findall(r"'([^']*)'", q):
        if lit not in states | devs:
            errors.append(f"'{lit}' is neither a job state nor a device")
    if "'queued'" not in q or "'cuda'" not in q:
        errors.append("the query does not count queued cuda jobs")
    return errors


@check
def grafana_dashboard() -> list[str]:
    dash = json.loads(read(DEPLOY / "grafana/tuna.json"))
    names, labels = exported_metrics()
    states, devs = job_states(), devices()
    errors = []
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        errors.append("duplicate panel ids")
    used: set[str] = set()
    for e in exprs:
        for m in re.findall(r"\btuna_[a-z_]+\b", e):
            used.add(m)
            if m not in names:
                errors.append(f"{m} is not exported by server/src/prometheus.rs")
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", e):
            for label in (g.strip() for g in group.split(",")):
                if label and label not in labels:
                    errors.append(f"label {label} (in {e}) is not a label of the exported metrics")
        for label, op, value in re.findall(r"(\w+)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"", e):
            if label not in labels:
                errors.append(f"label {label} (in {e}) is not a label of the exported metrics")
            allowed = {"state": states, "device": devs, "code": TONIC_CODES}.get(label)
            if allowed:
                for v in value.split("|") if "~" in op else [value]:
                    if v not in allowed:
                        errors.append(f'{label}="{v}" (in {e}) is never exported')
    wanted = ["tuna_jobs", "tuna_workers", "tuna_claim_duration_seconds_bucket", "tuna_job_duration_seconds_bucket",
              "tuna_jobs_finished_total", "tuna_job_retries_total", "tuna_leases_lost_total", "tuna_rpc_server_calls_total",
              "tuna_rpc_server_duration_seconds_bucket", "tuna_worker_tokens_per_second_bucket"]  # fmt: skip
    for w in wanted:
        if w not in used:
            errors.append(f"no panel shows {w}")
    if not any("histogram_quantile(0.99" in e and "tuna_claim_duration_seconds_bucket" in e for e in exprs):
        errors.append("no claim latency p99")
    return errors


def main() -> int:
    failed = 0
    for name, fn in CHECKS:
        try:
            errors = fn()
        except Exception as e:  # a crash in a check is that check's failure
            errors = [f"{type(e).__name__}: {e}"]
        if errors:
            failed += 1
            print(f"not ok {name}")
            for e in errors:
                print(f"    {e}")
        else:
            print(f"ok {name}")
    return 1 if failed else 0


def image_env(dockerfile: str, stage: str) -> dict[str, str]:
    chain = stage_chain(dockerfile_stages(DEPLOY / dockerfile), stage)
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(r for o, r in chain if o == "ENV")))


def compose_env(service: str) -> dict[str, str]:
    """A compose service's environment with ${VAR:?...} and ${VAR:-default} resolved from ours."""
    import os

    (doc,) = load_all(DEPLOY / "compose.yaml")

    def resolve(m: re.Match[str]) -> str:
        var, op, arg = m.group(1), m.group(2), m.group(3)
        if op == ":?" and not os.environ.get(var):
            raise SystemExit(f"compose.yaml needs {var}: {arg}")
        return os.environ.get(var) or (arg if op == ":-" else "")

    env = doc["services"][service].get("environment") or {}
    return {k: re.sub(r"\$\{(\w+)(:\?|:-)?([^}]*)\}", resolve, str(v)) for k, v in env.items()}


def user_setup(dockerfile: str, stage: str) -> str:
    """The RUN instruction of `stage` (or a stage below it) that creates the user."""
    chain = stage_chain(dockerfile_stages(DEPLOY / dockerfile), stage)
    (run,) = [r for o, r in chain if o == "RUN" and "useradd" in r]
    return run


if __name__ == "__main__":
    # Helpers for run.sh: --keda-query | --env DOCKERFILE STAGE | --user-setup DOCKERFILE STAGE
    # | --compose-env SERVICE
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "--keda-query":
        print(keda_query())
    elif mode == "--env":
        for k, v in image_env(sys.argv[2], sys.argv[3]).items():
            print(f"{k}={v}")
    elif mode == "--compose-env":
        for k, v in compose_env(sys.argv[2]).items():
            print(f"{k}={v}")
    elif mode == "--user-setup":
        print(user_setup(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(main())
