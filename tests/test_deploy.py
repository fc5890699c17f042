"""deploy/: the container image definition and the Kubernetes manifests cannot drift or rot.

The manifests validate against the Kubernetes schema (kubernetes-validate's bundled, strict
schemas of a pinned version: no network), so an unknown or misspelt field fails here; the
shard count agrees in the three places it is written; every ConfigMap, Secret and claim they
refer to exists. Then the manifests' own commands run here: the shards Job's container args and
env (ConfigMap and Secret values, the Job's uid, the JOB_COMPLETION_INDEX the Job controller
adds) as N local processes against an embedded reference server, with Kubernetes' $(VAR)
expansion and the report volume mapped to a temporary folder, then the merge Job's command.
The Dockerfile is read, not built (no Docker engine here): base image, non-root user,
entrypoint, and every file it copies present and not excluded by .dockerignore.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from simulator.embedded import embedded_server

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KUBERNETES = "1.31.0"  # the oldest minor the manifests are checked against (Indexed Jobs: 1.24+,
# the pods' batch.kubernetes.io/controller-uid label: 1.27+)
UID_LABEL = "metadata.labels['batch.kubernetes.io/controller-uid']"
SHARDS_JOB, MERGE_JOB = "midm-sim-shards", "midm-sim-merge"


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        found.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def named(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {K8S}")


def container(job: Mapping[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_the_manifests_validate_against_the_kubernetes_schema() -> None:
    docs = manifests()
    assert {doc["kind"] for _, doc in docs} >= {
        "Job", "ConfigMap", "Secret", "PersistentVolumeClaim",
    }  # fmt: skip
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc}")


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("spec", lambda s: s.update(completionsMode=s.pop("completionMode"))),  # a misspelt key
        ("spec", lambda s: s.update(completions="3")),  # a string for a number
        ("container", lambda c: c.update(arg=c.pop("args"))),
        ("container", lambda c: c["env"][0].update(valu=c["env"][0].pop("value"))),
    ],
)
def test_the_schema_check_catches_a_typo(where: str, change: Any) -> None:
    """The validation is strict: a misspelt or mistyped field is an error, not ignored."""
    job = copy.deepcopy(named("Job", SHARDS_JOB))
    change(job["spec"] if where == "spec" else job["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)


def env_of(c: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def test_the_shards_job_runs_one_indexed_shard_a_pod_and_its_references_exist() -> None:
    """completions = parallelism = MIDM_SIM_SHARDS (all shards at once), Indexed, never
    retried; the run id is the Job's uid; every key the Jobs read exists in the ConfigMap or
    the Secret; both Jobs mount the same claim and use one image; the merge reads the folder
    the shards write."""
    shards, merge = named("Job", SHARDS_JOB), named("Job", MERGE_JOB)
    spec = shards["spec"]
    env = env_of(container(shards))
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["MIDM_SIM_SHARDS"]["value"]) > 1
    assert spec["backoffLimit"] == 0 and merge["spec"]["backoffLimit"] == 0
    assert env["MIDM_SIM_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == UID_LABEL
    assert "--shard-from-env" in container(shards)["args"]
    for job in (shards, merge):
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["securityContext"]["runAsNonRoot"] is True
        for entry in env_of(container(job)).values():
            ref = entry.get("valueFrom", {})
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in ref:
                    source = named(kind, ref[key]["name"])
                    data = source.get("data") or source.get("stringData") or {}
                    assert ref[key]["key"] in data, (job["metadata"]["name"], entry["name"])
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["midm-sim-reports"]
        named("PersistentVolumeClaim", claims[0])
    assert container(shards)["image"] == container(merge)["image"]
    shards_args, merge_args = container(shards)["args"], container(merge)["args"]
    written = shards_args[shards_args.index("--report") + 1]
    assert merge_args[:2] == ["merge", written]
    assert merge_args[merge_args.index("--report") + 1] == written


# -- the Dockerfile --------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def ignored() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_the_image_is_python_slim_with_midm_sim_as_a_non_root_user() -> None:
    steps = instructions()
    kinds = [kind for kind, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    (user,) = [value for kind, value in steps if kind == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["midm-sim"]
    assert any(kind == "RUN" and "pip install /tmp/src" in value for kind, value in steps)
    workdir = dict(steps)["WORKDIR"]
    assert f"{workdir}/scenarios" in DOCKERFILE.read_text()  # the scenarios' relative paths
    scenario = named("ConfigMap", "midm-sim-run")["data"]["scenario"]
    assert (ROOT / scenario).is_file()  # ... as the ConfigMap names one


def test_the_build_context_keeps_what_pip_install_needs_and_drops_the_rest() -> None:
    """The Dockerfile copies the repository's root; .dockerignore keeps the project's files
    (pyproject's readme and licence too) and leaves out the virtualenv, git and caches."""
    excluded = ignored()
    for kind, value in instructions():
        if kind == "COPY":
            source = value.split()[0]
            assert (ROOT / source).exists(), source
    for needed in ("pyproject.toml", "README.md", "LICENSE", "scenarios", "agent", "server",
                   "simulator", "midm_common"):  # fmt: skip
        assert (ROOT / needed).exists()
        assert needed not in excluded
    assert {".git", ".venv", "**/__pycache__"} <= excluded


# -- the manifests' commands, run here ---------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_var(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of command and args: $(NAME) from the container's env (left as
    it is when undefined), $$ a literal $."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(one, text)


def pod_env(
    c: Mapping[str, Any],
    *,
    config: Mapping[str, str],
    secret: Mapping[str, str],
    uid: str,
    index: int | None,
) -> dict[str, str]:
    """The container's env as the kubelet resolves it, plus the Indexed Job's index."""
    env: dict[str, str] = {}
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry["valueFrom"]
        if "configMapKeyRef" in ref:
            env[entry["name"]] = config[ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            env[entry["name"]] = secret[ref["secretKeyRef"]["key"]]
        else:
            assert ref["fieldRef"]["fieldPath"] == UID_LABEL, ref
            env[entry["name"]] = uid
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)  # the Job controller sets it in Indexed Jobs
    return env


def local_command(
    c: Mapping[str, Any], env: Mapping[str, str], mounts: Mapping[str, Path]
) -> list[str]:
    """The container's command (the image's entrypoint when it has none) and args, expanded,
    with the volumes' mount paths mapped to local folders."""
    entrypoint = c.get("command") or json.loads(dict(instructions())["ENTRYPOINT"])
    assert entrypoint == ["midm-sim"]
    words = [str(Path(sys.executable).parent / "midm-sim")]
    for arg in c.get("args", []):
        word = expand_var(arg, env)
        for mount_path, local in mounts.items():
            if word == mount_path or word.startswith(mount_path + "/"):
                word = str(local) + word[len(mount_path) :]
                break
        words.append(word)
    return words


async def run(command: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MIDM_", "JOB_"))}
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,  # the image's WORKDIR: the scenarios' relative paths
        env={**base, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return await process.wait(), output.decode(errors="replace")


async def test_the_manifests_commands_run_n_shards_and_merge_them(tmp_path: Path) -> None:
    """The shards Job's pods as local processes (their env, JOB_COMPLETION_INDEX 0..N-1, one
    Job uid) against an embedded server: each exits 0 and writes its shard; the merge Job's
    command merges them into one report of the whole fleet that passes the scenario's
    expectations. Only the ConfigMap's target and size and the Secret's values are the test's."""
    shards_job, merge_job = named("Job", SHARDS_JOB), named("Job", MERGE_JOB)
    count = shards_job["spec"]["completions"]
    devices = 30
    config = {
        **named("ConfigMap", "midm-sim-run")["data"],
        "devices": str(devices),
        "duration": "30",
        "time-scale": "3",
    }
    uid = "0d6e2a3c-95b4-4c3e-9c1f-5a1f2b3c4d5e"
    mounts = {"/reports": tmp_path / "reports", "/tmp": tmp_path / "tmp"}  # noqa: S108
    for folder in mounts.values():
        folder.mkdir()
    async with embedded_server() as server:
        creds = server.credentials
        config["target"] = server.url
        secret = {
            "api-key": creds.api_key,
            "admin-email": creds.admin_email,
            "admin-password": creds.admin_password,
        }
        pods = []
        for index in range(count):
            c = container(shards_job)
            env = pod_env(c, config=config, secret=secret, uid=uid, index=index)
            pods.append(run(local_command(c, env, mounts), env))
        results = await asyncio.gather(*pods)
    for index, (code, output) in enumerate(results):
        assert code == 0, f"shard {index}: exit {code}\n{output}"
    c = container(merge_job)
    env = pod_env(c, config=config, secret={}, uid="another-uid", index=None)
    code, output = await run(local_command(c, env, mounts), env)
    assert code == 0, output
    run_folder = tmp_path / "reports" / config["run-name"]
    merged = json.loads((run_folder / "report.json").read_text())
    assert merged["shard"]["count"] == count
    assert merged["shard"]["run_id"] == uid
    assert [s["index"] for s in merged["shard"]["merged"]] == list(range(count))
    assert merged["devices"]["planned"] == merged["devices"]["enrolled"] == devices
    assert merged["requests"]["register"]["count"] == devices
    assert merged["partial"] is False
    assert all(e["passed"] for e in merged["expectations"]), merged["expectations"]
    assert sorted(p.name for p in run_folder.glob("shard-*")) == [
        f"shard-{i}" for i in range(count)
    ]
