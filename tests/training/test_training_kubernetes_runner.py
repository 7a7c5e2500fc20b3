"""The `kubernetes` runner against a STAND-IN Kubernetes API server (no cluster exists here).

`StandInKubernetes` plays the API server on loopback with the real REST paths and JSON (Jobs,
Pods, pod logs, watch events, Status errors), checks the bearer token, and authorizes every
request against the RBAC rules of the training Role that the real chart renders
(`helm template`): Jobs create/get/watch/delete, pods get/list, pods/log get, and NOT list on
Jobs. It also plays the kubelet: a created Job gets a Running pod whose log is what the trainer
prints (the progress JSON lines), writing the checkpoint and adapter files the lines name, and
then the Job's Complete or Failed condition. The runner is the real one, with the official
`kubernetes` client, a real SQLite database and a real blob store.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import helm_chart
import pytest
import yaml

from loomstack_kit.blobstore import FilesystemBlobStore
from loomstack_kit.database import create_db_engine, migrate
from loomstack_training.__main__ import MIGRATIONS, VERSION_TABLE
from loomstack_training.artifacts import store_bytes
from loomstack_training.jobs import Jobs
from loomstack_training.promotion import Promotion
from loomstack_training.runner_kubernetes import KubernetesRunner, api_client
from loomstack_training.settings import TrainingSettings
from loomstack_training.validation import Hyperparameters

NAMESPACE = "loomstack"
TOKEN = "stand-in-training-token"
Json = dict[str, Any]
Rules = set[tuple[str, str, str]]


def chart_training_rules() -> Rules:
    """(group, resource, verb) the chart's training Role grants, from the real `helm template`."""
    helm = helm_chart.ensure_helm()
    with tempfile.TemporaryDirectory(prefix="training-values-") as tmp:
        values = Path(tmp) / "values.yaml"
        values.write_text(
            yaml.safe_dump(
                {"training": {"enabled": True, "workVolume": {"existingClaim": "training-work"}}}
            )
        )
        objects = helm_chart.render(helm, values)
    role = next(
        o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("-training")
    )
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _status(code: int, reason: str, message: str) -> Json:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class StandInKubernetes:
    """A stand-in Kubernetes API server and kubelet (see the module docstring)."""

    rules: Rules
    outcome: str = "Complete"  # or "Failed" (reason DeadlineExceeded)
    hold: bool = False  # keep the pod running until the Job is deleted (cancel)
    jobs: dict[str, Json] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    deleted: threading.Event = field(default_factory=threading.Event)

    def authorize(self, method: str, path: str, query: dict[str, str]) -> tuple[str, str, str]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["apis", "batch", "v1"]:
            group, rest = "batch", parts[3:]
        else:
            group, rest = "", parts[2:]
        resource = rest[2] + ("/" + rest[4] if len(rest) > 4 else "")
        name = rest[3] if len(rest) > 3 else ""
        if method == "GET":
            verb = (
                "watch"
                if query.get("watch") in ("true", "True", "1")
                else "get"
                if name
                else "list"
            )
        else:
            verb = {"POST": "create", "DELETE": "delete"}[method]
        return group, resource, verb if (group, resource, verb) in self.rules else f"!{verb}"

    def handle(self, method: str, raw: str, headers: Any, body: bytes) -> tuple[int, Any, str]:
        url = urlparse(raw)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path))
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, _status(401, "Unauthorized", "Unauthorized"), "json"
        group, resource, verb = self.authorize(method, url.path, query)
        if verb.startswith("!"):
            message = f'cannot {verb[1:]} resource "{resource}" in API group "{group}"'
            self.forbidden.append(message)
            return 403, _status(403, "Forbidden", message), "json"
        parts = url.path.strip("/").split("/")
        if resource == "jobs" and verb == "create":
            return self._create(json.loads(body))
        if resource == "jobs" and verb == "get":
            return self._job(parts[-1])
        if resource == "jobs" and verb == "watch":
            name = query["fieldSelector"].split("=", 1)[1]
            return 200, self._watch(name), "watch"
        if resource == "jobs" and verb == "delete":
            job = self.jobs.pop(parts[-1], None)
            self.deleted.set()
            if job is None:
                return 404, _status(404, "NotFound", f'jobs.batch "{parts[-1]}" not found'), "json"
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}, "json"
        if resource == "pods" and verb == "list":
            name = query["labelSelector"].split("=", 1)[1]
            pods = [self._pod(name)] if name in self.jobs else []
            return (
                200,
                {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods},
                "json",
            )
        if resource == "pods/log":
            job_name = parts[-2].rsplit("-", 1)[0]
            if self.hold:
                self.deleted.wait(30)
            return 200, self.logs.get(job_name, ""), "text"
        return (
            404,
            _status(404, "NotFound", "the server could not find the requested resource"),
            "json",
        )

    def _create(self, manifest: Json) -> tuple[int, Json, str]:
        name = manifest["metadata"]["name"]
        manifest["metadata"].update(
            namespace=NAMESPACE,
            uid=f"uid-{name}",
            resourceVersion="1",
            creationTimestamp="2026-12-01T08:00:00Z",
        )
        manifest["status"] = {"active": 1}
        self.jobs[name] = manifest
        self.logs[name] = self._run_trainer(manifest)
        return 201, manifest, "json"

    def _run_trainer(self, manifest: Json) -> str:
        """What the trainer prints, with the files its lines name written to the volume."""
        config = json.loads(
            Path(manifest["spec"]["template"]["spec"]["containers"][0]["args"][0]).read_text()
        )
        out = Path(config["output_dir"])
        checkpoint, adapter = out / "checkpoints" / "checkpoint-1", out / "adapter"
        for d in (checkpoint, adapter):
            d.mkdir(parents=True, exist_ok=True)
            (d / "adapter_config.json").write_text('{"r": 4}')
        lines: list[Json] = [
            {"event": "started", "total_steps": 1, "examples": 4},
            {
                "event": "step",
                "step": 1,
                "total_steps": 1,
                "train_loss": 2.5,
                "learning_rate": 1e-3,
                "epoch": 1.0,
                "trained_tokens": 120,
                "tokens_per_second": 60.0,
            },
            {"event": "checkpoint", "step": 1, "path": str(checkpoint)},
        ]
        if self.outcome == "Complete":
            lines.append(
                {"event": "done", "adapter_dir": str(adapter), "steps": 1, "trained_tokens": 120}
            )
        text = "Unsloth: training on GPU\n" + "".join(json.dumps(x) + "\n" for x in lines)
        return text if self.outcome == "Complete" else text + "CUDA error: out of memory\n"

    def _finished(self, name: str) -> Json:
        job = self.jobs[name]
        if self.hold:
            return job
        job["metadata"]["resourceVersion"] = "2"
        reason = "" if self.outcome == "Complete" else "DeadlineExceeded"
        job["status"] = {
            "conditions": [
                {
                    "type": self.outcome,
                    "status": "True",
                    "reason": reason or None,
                    "lastTransitionTime": "2026-12-01T08:01:00Z",
                }
            ],
            **({"succeeded": 1} if self.outcome == "Complete" else {"failed": 1}),
        }
        return job

    def _job(self, name: str) -> tuple[int, Json, str]:
        if name not in self.jobs:
            return 404, _status(404, "NotFound", f'jobs.batch "{name}" not found'), "json"
        job = dict(self.jobs[name])
        job["status"] = {"active": 1}
        return 200, job, "json"

    def _watch(self, name: str) -> str:
        if name not in self.jobs:
            return (
                json.dumps(
                    {
                        "type": "DELETED",
                        "object": {
                            "kind": "Job",
                            "apiVersion": "batch/v1",
                            "metadata": {"name": name},
                        },
                    }
                )
                + "\n"
            )
        return json.dumps({"type": "MODIFIED", "object": self._finished(name)}) + "\n"

    def _pod(self, job_name: str) -> Json:
        template = self.jobs[job_name]["spec"]["template"]
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": f"{job_name}-abcde",
                "namespace": NAMESPACE,
                "labels": {**template["metadata"]["labels"], "job-name": job_name},
            },
            "spec": template["spec"],
            "status": {"phase": "Running"},
        }


def serve(api: StandInKubernetes) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, body, kind = api.handle(
                self.command, self.path, self.headers, self.rfile.read(length)
            )
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if kind == "text" else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_DELETE(self) -> None:
            self._answer()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "stand-in",
                "clusters": [{"name": "stand-in", "cluster": {"server": server}}],
                "users": [{"name": "training", "user": {"token": TOKEN}}],
                "contexts": [
                    {
                        "name": "stand-in",
                        "context": {
                            "cluster": "stand-in",
                            "user": "training",
                            "namespace": NAMESPACE,
                        },
                    }
                ],
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def training_rules() -> Rules:
    return chart_training_rules()


@dataclass
class Rig:
    api: StandInKubernetes
    jobs: Jobs
    runner: KubernetesRunner
    settings: TrainingSettings


@pytest.fixture()
def rig(tmp_path: Path, training_rules: Rules) -> Iterator[Rig]:
    api = StandInKubernetes(training_rules)
    server, url = serve(api)
    settings = TrainingSettings(
        home=tmp_path,
        runner="kubernetes",
        kubeconfig=str(kubeconfig(tmp_path / "kubeconfig", url)),
        kubernetes_namespace=NAMESPACE,
        kubernetes_node_selector='{"nvidia.com/gpu.present": "true"}',
        kubernetes_tolerations=json.dumps(
            [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        ),
        kubernetes_work_volume_claim="loomstack-training-work",
        kubernetes_active_deadline_seconds=7200,
        kubernetes_ttl_seconds_after_finished=600,
        poll_seconds=0.05,
    )
    url_db = f"sqlite:///{tmp_path / 'training.db'}"
    migrate(url_db, MIGRATIONS, VERSION_TABLE)
    jobs = Jobs(create_db_engine(url_db))
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    runner = KubernetesRunner(
        settings, jobs, blobs, Promotion(jobs, blobs), client=api_client(settings.kubeconfig)
    )
    try:
        yield Rig(api, jobs, runner, settings)
    finally:
        server.shutdown()


def _queue(rig: Rig) -> str:
    job = rig.jobs.create(
        project="p",
        model="SmolLM2-135M-Instruct",
        base_model_path="/models/smollm2",
        training_file="file-1",
        validation_file=None,
        suffix="k8s",
        seed=3,
        hyperparameters=Hyperparameters(1, 2, 1e-3, 64, 4, 8, 0.0, ("q_proj",)),
        metadata={},
        runner="kubernetes",
    )
    store_bytes(rig.runner.blobs, f"{job.id}-train", b'{"messages": []}\n')
    rig.jobs.mark_queued(job.id, "queued")
    return job.id


async def _run_until(rig: Rig, job_id: str, statuses: set[str], limit_seconds: float = 20) -> str:
    task = asyncio.create_task(rig.runner.run())
    try:
        async with asyncio.timeout(limit_seconds):
            while (status := rig.jobs.status_of(job_id)) not in statuses:
                await asyncio.sleep(0.05)
        # the runner records the outcome's last events right after the status changes
        await asyncio.sleep(0.2)
        return status
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_job_runs_as_a_gpu_job_within_the_chart_role_stand_in(rig: Rig) -> None:
    job_id = _queue(rig)
    assert await _run_until(rig, job_id, {"succeeded", "failed"}) == "succeeded"
    assert rig.api.forbidden == []
    manifest = next(iter(rig.api.jobs.values()))
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 7200 and spec["ttlSecondsAfterFinished"] == 600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "loomstack-training-work"
    # Pod Security "restricted", as every pod of the chart.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    job = rig.jobs.get("p", job_id)
    assert job.fine_tuned_model == f"ft:SmolLM2-135M-Instruct:k8s:{job_id}"
    assert job.trained_steps == 1 and job.trained_tokens == 120
    assert job.runner_ref == manifest["metadata"]["name"]
    assert [c.step for c in rig.jobs.checkpoints("p", job_id)[0]] == [1]
    # The one Job is watched by name (a watch, not a list: the Role grants no list on Jobs).
    assert ("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs") in rig.api.requests


async def test_failed_job_reports_reason_and_log_tail_stand_in(rig: Rig) -> None:
    rig.api.outcome = "Failed"
    job_id = _queue(rig)
    assert await _run_until(rig, job_id, {"succeeded", "failed"}) == "failed"
    error = rig.jobs.get("p", job_id).error
    assert error is not None and error["code"] == "trainer_failed"
    assert "DeadlineExceeded" in error["message"]
    assert "CUDA error: out of memory" in error["message"]


async def test_cancel_deletes_the_job_and_keeps_the_checkpoint_stand_in(rig: Rig) -> None:
    rig.api.hold = True
    job_id = _queue(rig)
    task = asyncio.create_task(rig.runner.run())
    try:
        async with asyncio.timeout(20):
            while not rig.api.jobs:
                await asyncio.sleep(0.05)
        rig.jobs.cancel("p", job_id)
        await asyncio.to_thread(rig.api.deleted.wait, 20)
        assert rig.api.deleted.is_set()
        async with asyncio.timeout(20):
            while not any(
                e.message.startswith("Trainer stopped") for e in rig.jobs.events("p", job_id)[0]
            ):
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rig.jobs.status_of(job_id) == "cancelled"
    assert rig.api.forbidden == []
    assert [c.step for c in rig.jobs.checkpoints("p", job_id)[0]] == [1]
