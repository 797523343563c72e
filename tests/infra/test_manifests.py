"""Checks for the deployment files: ray_cluster.yaml and everything under infra/.

Offline, no Docker daemon, a few seconds: every YAML parses; the Ray launcher config passes
the JSON schema the installed Ray ships and Ray's own prepare/validate; the KubeRay custom
resources obey the rules the KubeRay operator enforces at admission (re-implemented here for
the fields we use); schedules, images, versions and secrets are consistent across files; and
every ``mien`` command a manifest runs parses with the real CLI and names config files that
exist; and the custom resources (and the plain pods) are validated structurally against the
CRDs of the KubeRay release infra/README.md installs, vendored under infra/kuberay-crds/
(wrong types, missing required fields and unknown fields are errors).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import io
import json
import re
import shlex
import tomllib
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
RAY_CLUSTER_YAML = REPO / "ray_cluster.yaml"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = INFRA / "Dockerfile.dockerignore"
CONSTRAINTS = INFRA / "constraints.txt"
KUBERAY_RELEASE = "v1.7.0"
KUBERAY_CRDS = INFRA / "kuberay-crds" / KUBERAY_RELEASE  # KubeRay's CRDs, not our manifests
MANIFEST_FILES = sorted(p for p in INFRA.rglob("*.yaml") if KUBERAY_CRDS.parent not in p.parents)
RAY_CR_KINDS = ("RayCluster", "RayJob", "RayCronJob")
GPU_RESOURCE = "nvidia.com/gpu"
# Limits KubeRay 1.7 enforces on names (a RayCronJob's child RayJob adds an 11-char suffix).
MAX_RAYJOB_NAME = 47
MAX_RAYCRONJOB_NAME = 36
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


# ---------------------------------------------------------------------------------------------
# loading


def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFEST_FILES for doc in _load_docs(path)]


def _one(kind: str) -> tuple[Path, dict]:
    found = [(p, d) for p, d in _manifests() if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} under infra/, found {[str(p) for p, _ in found]}"
    return found[0]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _direct_requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = project["dependencies"] + project.get("optional-dependencies", {}).get("gpu", [])
    return [Requirement(r) for r in reqs]


def _pinned_ray_version() -> str:
    for req in _direct_requirements():
        if canonicalize_name(req.name) == "ray":
            (spec,) = req.specifier
            assert spec.operator == "==", f"pyproject.toml must pin ray exactly, not {req}"
            return spec.version
    raise AssertionError("pyproject.toml does not depend on ray")


def _ray_cluster_config() -> dict:
    return yaml.safe_load(RAY_CLUSTER_YAML.read_text())


def _collect(collector) -> list:
    """Parameters for a parametrized test; a file that does not parse fails in test_yaml_parses
    (and the Dockerfile tests) rather than breaking collection of the whole module."""
    try:
        return collector()
    except Exception:  # noqa: BLE001
        return []


def _ray_package_dir() -> Path:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin, "ray is not installed"
    return Path(spec.origin).parent


# ---------------------------------------------------------------------------------------------
# the Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    out = []
    for line in logical:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in _dockerfile_instructions():
        if instr == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _dockerfile_final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (instr, _) in enumerate(instructions) if instr == "FROM")
    return instructions[last_from:]


def _image_user_home() -> str:
    return _dockerfile_env()["HOME"]


def _image_workdir() -> str:
    workdirs = [args for instr, args in _dockerfile_final_stage() if instr == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


_SHELL_SEPARATORS = {";", "&", "&&", "|", "||", "(", ")"}
_SHELL_REDIRECTS = {">", ">>", "<", ">&", "<&", "&>", ">|"}
_SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}"}


def _shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell script as argv lists, quotes honoured, redirections dropped."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv: list[str] = []
    skip_next = False
    for token in [*lexer, ";"]:
        if skip_next:
            skip_next = False
        elif token in _SHELL_SEPARATORS:
            if argv:
                yield argv
            argv = []
        elif token in _SHELL_REDIRECTS:
            if argv and argv[-1].isdigit():
                argv.pop()  # the fd of `2>&1`
            skip_next = True
        elif argv or token not in _SHELL_KEYWORDS:  # `then mien ...` runs `mien ...`
            argv.append(token)


# ---------------------------------------------------------------------------------------------
# cron


_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_CRON_FIELDS = [
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
]


def cron_errors(expr: str) -> list[str]:
    """Problems with a standard 5-field cron expression (as Kubernetes and KubeRay parse it)."""
    fields = expr.split()
    if len(fields) != 5:
        return [f"{expr!r} has {len(fields)} fields; a cron schedule has 5"]
    errors = []
    for text, (name, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.lower().split(","):
            m = re.fullmatch(r"(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(\d+))?", part)
            if not m:
                errors.append(f"{name}: cannot parse {part!r}")
                continue
            span, step = m.groups()
            if step is not None and int(step) == 0:
                errors.append(f"{name}: step 0 in {part!r}")
            if span == "*":
                continue
            values = [names.get(v, int(v) if v.isdigit() else None) for v in span.split("-")]
            if any(v is None or not lo <= v <= hi for v in values):
                errors.append(f"{name}: {part!r} is outside {lo}-{hi}")
            elif len(values) == 2 and values[0] > values[1]:
                errors.append(f"{name}: range {part!r} runs backwards")
    return errors


@pytest.mark.parametrize("expr", ["0 2 * * *", "*/15 * * * *", "30 1 1,15 * mon-fri", "0 0 * jan-mar 0"])
def test_cron_checker_accepts_valid_schedules(expr: str) -> None:
    assert cron_errors(expr) == []


@pytest.mark.parametrize("expr", ["0 2 * *", "60 * * * *", "0 24 * * *", "* * 0 * *", "*/0 * * * *",
                                  "0 2 * * * *", "5-1 * * * *", "0 2 * * funday", "@daily"])
def test_cron_checker_rejects_invalid_schedules(expr: str) -> None:
    assert cron_errors(expr)


# ---------------------------------------------------------------------------------------------
# every file parses


@pytest.mark.parametrize("path", [RAY_CLUSTER_YAML, *MANIFEST_FILES], ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    docs = _load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if path != RAY_CLUSTER_YAML:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: document without apiVersion/kind"
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"


def test_expected_manifests_exist() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in _manifests()}
    expected = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob"), ("ray.io/v1", "RayCronJob"),
                ("batch/v1", "CronJob"), ("apps/v1", "Deployment"), ("v1", "Service")}
    assert expected <= kinds, f"missing: {sorted(expected - kinds)}"


# ---------------------------------------------------------------------------------------------
# ray_cluster.yaml (Ray cluster launcher)


def test_ray_cluster_yaml_matches_the_schema_ray_ships() -> None:
    schema = json.loads((_ray_package_dir() / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_ray_cluster_config(), schema)


def test_ray_cluster_yaml_passes_ray_prepare_and_validate() -> None:
    # What `ray up` runs before it talks to the cloud (the AWS bootstrap needs network).
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_ray_cluster_config()))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_ray_cluster_yaml_has_head_cpu_and_gpu_pools() -> None:
    cfg = _ray_cluster_config()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head should run no Ray tasks (control plane only)"
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu = {n for n, t in workers.items() if re.match(r"(g\d|p\d)", t["node_config"]["InstanceType"])}
    cpu = {n for n, t in workers.items() if re.match(r"(c|m|r)\d", t["node_config"]["InstanceType"])}
    assert gpu, "no GPU worker type (g*/p* instance)"
    assert cpu, "no CPU worker type (c*/m*/r* instance)"
    for name, t in workers.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"], name
    assert all(workers[n].get("min_workers", 0) == 0 for n in gpu), "GPU pools should scale to zero"
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0


def test_ray_cluster_yaml_image_start_commands_and_token() -> None:
    cfg = _ray_cluster_config()
    docker = cfg["docker"]
    assert docker["image"] and docker["container_name"]
    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    # Dashboard + job server on loopback; reached through `ray dashboard` (SSH tunnel).
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--address=$RAY_HEAD_IP:6379" in worker_start
    # Token auth for every process in the container, token synced to the default location.
    assert any("RAY_AUTH_MODE=token" in opt for opt in docker["run_options"])
    assert f"{_image_user_home()}/.ray" in cfg["file_mounts"], "auth token not mounted at ~/.ray of the image user"


# ---------------------------------------------------------------------------------------------
# the image


def test_dockerfile_uses_a_cuda_base_and_a_non_root_user() -> None:
    instructions = _dockerfile_instructions()
    args = {}
    for instr, rest in instructions:
        if instr == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args.setdefault(key, value)
    base = _dockerfile_final_stage()[0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), base)
    assert base.startswith("nvidia/cuda:"), f"final stage is not built on a CUDA image: {base}"
    users = [rest for instr, rest in _dockerfile_final_stage() if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    home = _image_user_home()
    assert home == f"/home/{users[-1]}", "set HOME explicitly: the Ray launcher reads it from the image config"
    assert not any(instr == "HEALTHCHECK" for instr, _ in instructions)


def test_dockerfile_installs_pinned_dependencies_and_never_torchvision() -> None:
    installs = [argv for instr, rest in _dockerfile_instructions() if instr == "RUN"
                for argv in _shell_commands(rest) if argv[:2] == ["pip", "install"]]
    assert installs
    for argv in installs:
        assert not any("torchvision" in a for a in argv), f"installs torchvision: {shlex.join(argv)}"
    assert any(re.fullmatch(r"torch==\$\{?TORCH_VERSION\}?", a) for argv in installs for a in argv), \
        "torch is not installed pinned"
    assert any("-c" in argv and any(a.endswith("constraints.txt") for a in argv) for argv in installs), \
        "dependencies are not installed with the constraints file"
    assert any("--no-deps" in argv and any(a.startswith("insightface==") for a in argv) for argv in installs)
    assert not any(re.search(r"^\s*torch(vision)?==", line) for line in CONSTRAINTS.read_text().splitlines())


def test_dockerfile_runtime_environment() -> None:
    env = _dockerfile_env()
    assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true"
    assert env.get("HF_HUB_OFFLINE") == "1" and env.get("TRANSFORMERS_OFFLINE") == "1"
    assert env.get("TORCH_EXTENSIONS_DIR", "").startswith(_image_user_home())
    apt = " ".join(rest for instr, rest in _dockerfile_instructions() if instr == "RUN" and "apt-get install" in rest)
    assert re.search(r"\brsync\b", apt), "the Ray launcher copies files into the container with rsync"


def test_dockerignore_lets_the_build_inputs_through() -> None:
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    pyproject = _pyproject()
    needed = {"pyproject.toml", "infra/constraints.txt", pyproject["project"].get("readme", "pyproject.toml"),
              *pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {n.rstrip("*") for n in needed}
    assert needed <= allowed, f"excluded from the build context: {sorted(needed - allowed)}"


def test_constraints_pin_every_direct_dependency() -> None:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    problems = []
    for req in _direct_requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue  # installed first, per image variant (CPU venv / CUDA image)
        if name not in pins:
            problems.append(f"{req.name} is not pinned")
        elif not req.specifier.contains(Version(pins[name]), prereleases=True):
            problems.append(f"{req.name}=={pins[name]} does not satisfy {req}")
    assert not problems, "infra/constraints.txt is stale (regenerate it, see its header): " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# KubeRay custom resources


def _ray_cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for path, doc in _manifests():
        label = f"{path.relative_to(REPO)}:{doc['kind']}"
        if doc["kind"] == "RayCluster":
            out.append((label, doc["spec"]))
        elif doc["kind"] == "RayJob":
            out.append((label, doc["spec"]["rayClusterSpec"]))
        elif doc["kind"] == "RayCronJob":
            out.append((label, doc["spec"]["jobTemplate"]["rayClusterSpec"]))
    return out


def _ray_containers(spec: dict) -> list[dict]:
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    return [t["spec"]["containers"][0] for t in templates]


def _gpu_count(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU_RESOURCE, 0))


@pytest.mark.parametrize("label,spec", _collect(_ray_cluster_specs),
                         ids=[label for label, _ in _collect(_ray_cluster_specs)])
def test_ray_cluster_spec(label: str, spec: dict) -> None:
    assert spec["rayVersion"] == _pinned_ray_version(), "rayVersion must match the Ray pinned in pyproject.toml"
    assert spec.get("authOptions", {}).get("mode") == "token", "Ray token auth must be on"
    assert spec.get("enableInTreeAutoscaling") is True
    autoscaler_v2 = spec.get("autoscalerOptions", {}).get("version") == "v2"

    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the head should run no Ray tasks"
    # The head Service routes to the pod IP, so the dashboard must not bind to loopback here.
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    head_ports = {p["containerPort"]: p.get("name") for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports.get(8265) == "dashboard" and 6379 in head_ports

    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in [head, *groups]:
        name = group.get("groupName", "head")
        # KubeRay rejects resources given both ways, and Ray labels in rayStartParams.
        params = group["rayStartParams"]
        assert not (group.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & params.keys()), name
        assert "labels" not in params, name
        assert group["template"]["spec"].get("restartPolicy", "Never") == "Never", f"{name}: autoscaler v2 needs Never"
    for g in groups:
        lo, hi = g["minReplicas"], g["maxReplicas"]
        assert 0 <= lo <= hi, f"{g['groupName']}: minReplicas {lo} > maxReplicas {hi}"
        assert lo <= g.get("replicas", lo) <= hi, f"{g['groupName']}: replicas outside [min, max]"
        if "idleTimeoutSeconds" in g:
            assert autoscaler_v2, f"{g['groupName']}: idleTimeoutSeconds needs autoscaler v2"

    gpu_groups = [g for g in groups if _gpu_count(g["template"]["spec"]["containers"][0]) > 0]
    cpu_groups = [g for g in groups if _gpu_count(g["template"]["spec"]["containers"][0]) == 0]
    assert gpu_groups and cpu_groups, "need a CPU worker group (decode/faces) and a GPU worker group (MLLM)"
    assert all(g["minReplicas"] == 0 for g in gpu_groups), "GPU groups should scale to zero"

    for container in _ray_containers(spec):
        res = container["resources"]
        for key in ("cpu", "memory", GPU_RESOURCE):
            if key in res.get("limits", {}) or key in res.get("requests", {}):
                # Ray sizes itself from the limits; requests below them over-commit the node.
                assert str(res["requests"].get(key)) == str(res["limits"].get(key)), f"{container['name']}: {key}"
        assert any(m["mountPath"] == "/dev/shm" for m in container.get("volumeMounts", [])), \
            f"{container['name']}: no /dev/shm volume for the object store"
        assert not container.get("command"), "KubeRay generates `ray start`; do not override the command"


def test_pools_have_the_same_custom_resources_everywhere() -> None:
    # A stage that pins itself with resources={"gpu_pool": ...} must run under `ray up` and KubeRay alike.
    builtin = {"CPU", "GPU", "memory", "object_store_memory"}
    cfg = _ray_cluster_config()
    launcher = {r for t in cfg["available_node_types"].values() for r in t["resources"]} - builtin
    assert launcher, "ray_cluster.yaml defines no pool resources"
    for label, spec in _ray_cluster_specs():
        kuberay = {r for g in spec["workerGroupSpecs"] for r in g.get("resources", {})} - builtin
        assert kuberay == launcher, f"{label}: custom resources {sorted(kuberay)} != ray_cluster.yaml {sorted(launcher)}"


def _check_ray_job_spec(spec: dict, what: str) -> None:
    assert spec["shutdownAfterJobFinishes"] is True, f"{what}: the job's cluster must go away afterwards"
    assert spec.get("ttlSecondsAfterFinished", 0) >= 0
    assert spec.get("activeDeadlineSeconds", 1) > 0
    assert spec.get("backoffLimit", 0) >= 0
    assert not spec.get("suspend"), f"{what} is suspended"
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    if spec.get("runtimeEnvYAML"):
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    submitter = spec.get("submitterPodTemplate")
    if submitter:
        # The submitter runs as a Kubernetes Job: its pods may not use restartPolicy Always.
        assert submitter["spec"].get("restartPolicy") in ("Never", "OnFailure"), f"{what}: submitter restartPolicy"
        assert not submitter["spec"]["containers"][0].get("command"), "KubeRay fills in `ray job submit`"


def test_rayjob_annotate() -> None:
    path, job = _one("RayJob")
    name = job["metadata"]["name"]
    assert len(name) <= MAX_RAYJOB_NAME and DNS1035.fullmatch(name), f"invalid RayJob name {name!r}"
    _check_ray_job_spec(job["spec"], name)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["mien", "annotate"]
    for flag in ("--input", "--output"):
        assert argv[argv.index(flag) + 1].startswith("s3://"), f"{flag} should be an S3 URI"


def test_raycronjob_retrain() -> None:
    path, cron = _one("RayCronJob")
    name = cron["metadata"]["name"]
    assert len(name) <= MAX_RAYCRONJOB_NAME and DNS1035.fullmatch(name), f"invalid RayCronJob name {name!r}"
    spec = cron["spec"]
    assert "TZ" not in spec["schedule"], "use spec.timeZone, not CRON_TZ/TZ in the schedule"
    assert cron_errors(spec["schedule"]) == []
    if "timeZone" in spec:
        zoneinfo.ZoneInfo(spec["timeZone"])
    assert spec.get("suspend") is not True
    _check_ray_job_spec(spec["jobTemplate"], name)
    assert shlex.split(spec["jobTemplate"]["entrypoint"])[:2] == ["mien", "retrain"]


# ---------------------------------------------------------------------------------------------
# the plain CronJob


def test_cronjob_retrain_submits_to_the_raycluster() -> None:
    _, cron = _one("CronJob")
    _, cluster = _one("RayCluster")
    spec = cron["spec"]
    assert cron_errors(spec["schedule"]) == []
    if "timeZone" in spec:
        zoneinfo.ZoneInfo(spec["timeZone"])
    assert spec["concurrencyPolicy"] == "Forbid", "two retrains must never run at once"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    argv = container["command"] + container.get("args", [])
    assert argv[:3] == ["mien", "submit", "retrain"] and "--wait" in argv
    address = urlparse(argv[argv.index("--address") + 1])
    assert address.hostname == f"{cluster['metadata']['name']}-head-svc" and address.port == 8265
    assert container.get("workingDir") == _image_workdir(), "`mien submit` uploads the working directory"
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": cluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}


# ---------------------------------------------------------------------------------------------
# MLflow


def test_mlflow_server_deployment_and_service() -> None:
    _, deploy = _one("Deployment")
    _, service = _one("Service")
    pod = deploy["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no MLflow pod"
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] in ports or svc_port["targetPort"] in ports.values()

    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"], "backend store URI must come from a Secret"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    argv = container["command"] + container.get("args", [])
    assert argv[:2] == ["mlflow", "server"] and "0.0.0.0" in argv
    assert not any(a.startswith(("sqlite:", "file:", "./mlruns")) for a in argv), "no sqlite/file store on a server"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"

    # Same MLflow minor as the client, and the -full variant (PostgreSQL drivers, boto3).
    image_tag = container["image"].rsplit(":", 1)[1]
    assert image_tag.endswith("-full")
    (mlflow_req,) = [r for r in _direct_requirements() if canonicalize_name(r.name) == "mlflow"]
    assert mlflow_req.specifier.contains(image_tag.removeprefix("v").removesuffix("-full"))

    # Every Ray pod reports to this server.
    expected = f"http://{service['metadata']['name']}:{svc_port['port']}"
    for label, spec in _ray_cluster_specs():
        for c in _ray_containers(spec):
            uris = [e.get("value") for e in c.get("env", []) if e["name"] == "MLFLOW_TRACKING_URI"]
            assert uris == [expected], f"{label}/{c['name']}: MLFLOW_TRACKING_URI {uris} != {expected}"


# ---------------------------------------------------------------------------------------------
# images, secrets, commands across files


def _walk(node, path=()) -> Iterator[tuple[tuple, object]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, (*path, i))


def _containers(doc: dict) -> Iterator[dict]:
    for path, node in _walk(doc):
        if path and path[-1] in ("containers", "initContainers") and isinstance(node, list):
            yield from node


def test_one_mien_image_everywhere() -> None:
    cfg = _ray_cluster_config()
    images = {("ray_cluster.yaml", cfg["docker"][k]) for k in ("image", "head_image", "worker_image") if k in cfg["docker"]}
    for path, doc in _manifests():
        if doc["kind"] in (*RAY_CR_KINDS, "CronJob"):
            images |= {(str(path.relative_to(REPO)), c["image"]) for c in _containers(doc)}
    distinct = {image for _, image in images}
    assert len(distinct) == 1, f"manifests disagree on the image: {sorted(images)}"
    (image,) = distinct
    assert image.rsplit(":", 1)[1] == _pyproject()["project"]["version"], "image tag != project version"


_SECRETISH_ENV = re.compile(r"(KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|STORE_URI|DATABASE_URL)", re.I)


def test_credentials_come_only_from_secret_refs() -> None:
    for path, doc in _manifests():
        assert doc["kind"] != "Secret", f"{path}: create Secrets with kubectl, never commit them"
        for container in _containers(doc):
            for e in container.get("env", []):
                if _SECRETISH_ENV.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), \
                        f"{path}: {container['name']} sets {e['name']} inline; use valueFrom.secretKeyRef"
    cfg = _ray_cluster_config()
    for opt in cfg["docker"].get("run_options", []):
        m = re.search(r"--env[ =](\w+)=", opt)
        assert not (m and _SECRETISH_ENV.search(m.group(1))), f"ray_cluster.yaml passes {m.group(1)} inline"


_CREDENTIAL_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                          # AWS access key ids
    re.compile(r"aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
_URI_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:@'\"]+):([^/\s@'\"]+)@")
_PLACEHOLDER = re.compile(r"[A-Z_]+|\$\{?\w+\}?|\$\(\w+\)")


@pytest.mark.parametrize("path", [RAY_CLUSTER_YAML, DOCKERFILE, INFRA / "README.md", *MANIFEST_FILES],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_credential_literals(path: Path) -> None:
    text = path.read_text()
    for pattern in _CREDENTIAL_PATTERNS:
        assert not pattern.search(text), f"{path}: looks like a credential ({pattern.pattern})"
    for user, password in _URI_USERINFO.findall(text):
        assert _PLACEHOLDER.fullmatch(user) and _PLACEHOLDER.fullmatch(password), \
            f"{path}: a URI with an inline password"


def _mien_commands() -> list[tuple[str, list[str]]]:
    """Every `mien ...` invocation in the deployment files, as (where, argv)."""
    found: list[tuple[str, list[str]]] = []

    def add_script(where: str, script: str) -> None:
        found.extend((where, argv) for argv in _shell_commands(script) if argv[0] == "mien")

    for _, doc in _manifests():
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "RayJob":
            add_script(where, doc["spec"]["entrypoint"])
        elif doc["kind"] == "RayCronJob":
            add_script(where, doc["spec"]["jobTemplate"]["entrypoint"])
        for c in _containers(doc):
            argv = c.get("command", []) + c.get("args", [])
            if argv[:1] == ["mien"]:
                found.append((where, argv))
    cfg = _ray_cluster_config()
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        for script in cfg.get(key, []):
            add_script(f"ray_cluster.yaml {key}", script)
    for instr, rest in _dockerfile_instructions():
        if instr == "RUN":
            add_script("Dockerfile RUN", rest)
    return found


def test_manifests_run_mien_commands() -> None:
    wheres = {where.split()[0] for where, _ in _mien_commands()}
    assert {"RayJob", "RayCronJob", "CronJob", "Dockerfile"} <= wheres


@pytest.mark.parametrize("where,argv", _collect(_mien_commands),
                         ids=[f"{w}: mien {a[1]}" for w, a in _collect(_mien_commands)])
def test_mien_command_parses_with_the_real_cli(where: str, argv: list[str]) -> None:
    from jobs.cli import build_parser

    def parse(args: list[str]) -> None:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                build_parser().parse_args(args)
            except SystemExit as e:
                if e.code not in (0, None):  # `--help` exits 0
                    pytest.fail(f"{where}: `{shlex.join(['mien', *args])}` is not a valid mien command:\n"
                                f"{stderr.getvalue()}")

    if argv[1] == "submit" and "--" in argv:
        # As `mien submit` does: its own options before `--`, the job's arguments after it,
        # which must parse as that job's subcommand.
        cut = argv.index("--")
        parse(argv[1:cut])
        parse([argv[2], *argv[cut + 1:]])
    else:
        parse(argv[1:])

    # Config files the command names must exist: absolute paths in the image map to the repo.
    for i, arg in enumerate(argv[:-1]):
        if arg == "--config":
            config = argv[i + 1]
            root = _image_workdir().rstrip("/") + "/"
            local = REPO / (config[len(root):] if config.startswith(root) else config)
            assert not Path(config).is_absolute() or config.startswith(root), f"{where}: {config} is not in the image"
            assert local.is_file(), f"{where}: config {config} does not exist in the repository ({local})"


# ---------------------------------------------------------------------------------------------
# structural validation against KubeRay's own CRDs (vendored from the release, infra/kuberay-crds/)


def _strict(schema):
    """Make an OpenAPI schema reject unknown fields, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@functools.cache
def _crd_schemas() -> dict[str, dict]:
    """Kind -> the strict ``v1`` openAPIV3Schema of each vendored KubeRay CRD."""
    schemas = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes of YAML
    for path in sorted(KUBERAY_CRDS.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)
        for version in crd["spec"]["versions"]:
            if version["name"] == "v1":
                schemas[crd["spec"]["names"]["kind"]] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _pod_template_schema() -> dict:
    """The core PodTemplateSpec schema the CRDs embed (for the plain Deployment and CronJob pods)."""
    spec = _crd_schemas()["RayCluster"]["properties"]["spec"]
    return spec["properties"]["headGroupSpec"]["properties"]["template"]


def schema_errors(node: object, schema: dict) -> list[str]:
    """``path: message`` for every place ``node`` breaks ``schema`` (empty when it conforms)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message[:200]}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(node)]


def _custom_resources() -> list[tuple[str, dict]]:
    return [(f"{path.relative_to(REPO)}:{doc['kind']}", doc) for path, doc in _manifests()
            if doc["kind"] in RAY_CR_KINDS]


def _plain_pod_templates() -> list[tuple[str, dict]]:
    out = []
    for kind, keys in (("Deployment", ["spec", "template"]), ("CronJob", ["spec", "jobTemplate", "spec", "template"])):
        path, node = _one(kind)
        for key in keys:
            node = node[key]
        out.append((f"{path.relative_to(REPO)}:{kind}", node))
    return out


def test_vendored_crds_are_the_release_files_for_the_documented_operator() -> None:
    listed = dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", (KUBERAY_CRDS / "README.md").read_text(), re.M))
    files = {p.name for p in KUBERAY_CRDS.iterdir() if p.name != "README.md"}
    assert files == set(listed), f"{KUBERAY_CRDS}: files {sorted(files)} != README.md's sha256 table {sorted(listed)}"
    for name, digest in listed.items():
        assert hashlib.sha256((KUBERAY_CRDS / name).read_bytes()).hexdigest() == digest, f"{name} was edited"
    assert "Apache License" in (KUBERAY_CRDS / "LICENSE").read_text()
    assert set(RAY_CR_KINDS) <= _crd_schemas().keys(), f"CRDs found: {sorted(_crd_schemas())}"
    # The manifests are checked against the operator release infra/README.md tells users to install.
    helm = re.findall(r"kuberay/kuberay-operator --version (\S+)", (INFRA / "README.md").read_text())
    assert helm and set(helm) == {KUBERAY_RELEASE.removeprefix("v")}, \
        f"infra/README.md installs KubeRay {helm}, the vendored CRDs are {KUBERAY_RELEASE}"


@pytest.mark.parametrize("label,doc", _collect(_custom_resources),
                         ids=[label for label, _ in _collect(_custom_resources)])
def test_custom_resource_matches_its_kuberay_crd(label: str, doc: dict) -> None:
    errors = schema_errors(doc, _crd_schemas()[doc["kind"]])
    assert not errors, f"{label}:\n" + "\n".join(errors)


@pytest.mark.parametrize("label,template", _collect(_plain_pod_templates),
                         ids=[label for label, _ in _collect(_plain_pod_templates)])
def test_plain_pod_template_matches_the_core_schema(label: str, template: dict) -> None:
    errors = schema_errors(template, _pod_template_schema())
    assert not errors, f"{label}:\n" + "\n".join(errors)


def _head_container(spec: dict) -> dict:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


# (kind, what is broken, the mutation, the path of the error it must cause)
CRD_MUTATIONS = [
    ("RayCluster", "wrong type", lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="8"),
     "spec/workerGroupSpecs/0/maxReplicas"),
    ("RayCluster", "unknown field", lambda d: d["spec"]["headGroupSpec"].update(rayStartParam={}),
     "spec/headGroupSpec"),
    ("RayCluster", "required field missing", lambda d: d["spec"].pop("headGroupSpec"), "spec"),
    ("RayCluster", "quantity that is not one", lambda d: _head_container(d["spec"])["resources"]["limits"]
     .update(memory="16 GB"), "spec/headGroupSpec/template/spec/containers/0/resources/limits/memory"),
    ("RayJob", "wrong type in the embedded pod spec",
     lambda d: _head_container(d["spec"]["rayClusterSpec"])["ports"][0].update(containerPort="6379"),
     "spec/rayClusterSpec/headGroupSpec/template/spec/containers/0/ports/0/containerPort"),
    ("RayJob", "wrong type", lambda d: d["spec"].update(shutdownAfterJobFinishes="yes"),
     "spec/shutdownAfterJobFinishes"),
    ("RayCronJob", "required field missing", lambda d: d["spec"].pop("schedule"), "spec"),
    ("RayCronJob", "unknown field", lambda d: d["spec"]["jobTemplate"].update(concurrencyPolicy="Forbid"),
     "spec/jobTemplate"),
]


@pytest.mark.parametrize("kind,broken,mutate,where", CRD_MUTATIONS, ids=[f"{k}: {b}" for k, b, _, _ in CRD_MUTATIONS])
def test_crd_validation_rejects_a_broken_manifest(kind: str, broken: str, mutate, where: str) -> None:
    _, doc = _one(kind)
    assert schema_errors(doc, _crd_schemas()[kind]) == []
    doc = copy.deepcopy(doc)
    mutate(doc)
    errors = schema_errors(doc, _crd_schemas()[kind])
    assert any(e.startswith(f"{where}: ") for e in errors), f"{broken} at {where} not reported: {errors}"
