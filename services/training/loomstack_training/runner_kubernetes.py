"""The `kubernetes` runner: each job's trainer as a `batch/v1` Job on a GPU node.

The Job runs the same trainer.py as the local runner, in the training image, with
`nvidia.com/gpu` limits, the configured nodeSelector and tolerations, `backoffLimit`,
`activeDeadlineSeconds` and `ttlSecondsAfterFinished`. The job directory (config, data,
checkpoints, adapter) lives on a ReadWriteMany volume that the service and the Job's pod both
mount at the same path. Progress comes from the pod's log (the trainer's JSON lines on stdout);
the Job's outcome from a watch on that one Job. It needs exactly what the chart's training Role
grants: Jobs create/get/watch/delete, pods get/list, pods/log get (never list on Jobs).
A cancel deletes the Job (its pod gets SIGTERM and saves a checkpoint); a service restart
re-attaches to the Jobs that are still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from loomstack_kit.blobstore import BlobStore
from loomstack_kit.kubernetes_api import api_client as kubernetes_api_client

from .artifacts import read_bytes
from .jobs import CANCELLED, RUNNING, Jobs, JobView
from .progress import ProgressRecorder
from .promotion import Promotion
from .runner_local import trainer_config
from .settings import TrainingSettings

log = logging.getLogger(__name__)
RUNNER = "kubernetes"
JOB_LABEL = "loomstack.dev/fine-tuning-job"


# The non-root user of the trainer image (docker/training.Dockerfile).
TRAINER_UID = 10001


def k8s_job_name(job_id: str) -> str:
    """A DNS-1123 name for the Job of a fine-tuning job."""
    return f"loomstack-train-{job_id.removeprefix('ftjob-')}"[:63].lower()


def job_manifest(job: JobView, settings: TrainingSettings, config_path: Path) -> dict[str, Any]:
    """The `batch/v1` Job that trains `job` (the trainer image reads `config_path`)."""
    labels = {
        "app.kubernetes.io/name": "loomstack",
        "app.kubernetes.io/component": "training-job",
        "app.kubernetes.io/part-of": "loomstack",
        JOB_LABEL: job.id,
    }
    work_dir = str(settings.resolved_work_dir())
    container: dict[str, Any] = {
        "name": "trainer",
        "image": settings.kubernetes_image,
        "command": [settings.kubernetes_trainer_python, settings.kubernetes_trainer_script],
        "args": [str(config_path)],
        # The root filesystem is read-only (Pod Security "restricted"): caches go to /tmp.
        "env": [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        ],
        "resources": {
            "limits": {settings.kubernetes_gpu_resource: str(settings.kubernetes_gpu_count)}
        },
        "volumeMounts": [
            {"name": "work", "mountPath": work_dir},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    volume: dict[str, Any] = {"name": "work"}
    if settings.kubernetes_work_volume_claim:
        volume["persistentVolumeClaim"] = {"claimName": settings.kubernetes_work_volume_claim}
    else:
        volume["emptyDir"] = {}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": int(settings.cancel_grace_seconds),
        # Pod Security "restricted", like every pod of the chart (the trainer image's user).
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            volume,
            {"name": "tmp", "emptyDir": {}},
            # PyTorch's data loader workers share tensors through /dev/shm.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
        "nodeSelector": orjson.loads(settings.kubernetes_node_selector or "{}"),
        "tolerations": orjson.loads(settings.kubernetes_tolerations or "[]"),
    }
    if settings.kubernetes_service_account:
        pod_spec["serviceAccountName"] = settings.kubernetes_service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": k8s_job_name(job.id), "labels": labels},
        "spec": {
            "backoffLimit": settings.kubernetes_backoff_limit,
            "activeDeadlineSeconds": settings.kubernetes_active_deadline_seconds,
            "ttlSecondsAfterFinished": settings.kubernetes_ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def api_client(kubeconfig: str) -> Any:
    """An ApiClient from the pod's ServiceAccount (in-cluster) or from a kubeconfig."""
    return kubernetes_api_client(
        kubeconfig, who="the training service", kubeconfig_setting="LOOMSTACK_TRAINING_KUBECONFIG"
    )


class KubernetesRunner:
    """Claims queued `kubernetes` jobs, creates their Jobs and follows them to the end."""

    def __init__(
        self,
        settings: TrainingSettings,
        jobs: Jobs,
        blobs: BlobStore,
        promotion: Promotion,
        client: Any | None = None,
    ) -> None:
        from kubernetes import client as k8s

        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        self.promotion = promotion
        self.namespace = settings.kubernetes_namespace
        self.work_dir = settings.resolved_work_dir()
        api = client or api_client(settings.kubeconfig)
        self.batch: Any = k8s.BatchV1Api(api)
        self.core: Any = k8s.CoreV1Api(api)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def reconcile(self) -> list[str]:
        """Re-attaches to running Jobs; fails jobs whose Job was never created or is gone."""
        from kubernetes.client.exceptions import ApiException

        failed = []
        for job in await asyncio.to_thread(self.jobs.unfinished, RUNNER):
            if not job.runner_ref:
                if await asyncio.to_thread(
                    self.jobs.fail,
                    job.id,
                    "service_restarted",
                    "the training service restarted before the job's Kubernetes Job was created",
                ):
                    failed.append(job.id)
                continue
            try:
                await asyncio.to_thread(
                    self.batch.read_namespaced_job, job.runner_ref, self.namespace
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                if await asyncio.to_thread(
                    self.jobs.fail,
                    job.id,
                    "trainer_lost",
                    f"the Kubernetes Job {job.runner_ref} no longer exists",
                ):
                    failed.append(job.id)
                continue
            self._start(job, job.runner_ref)
        return failed

    def _start(self, job: JobView, name: str) -> None:
        task = asyncio.create_task(self._guarded(job, self._follow(job, name)))
        self._tasks[job.id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for job_id, running in list(self._tasks.items()):
            if running is task:
                del self._tasks[job_id]

    async def run(self) -> None:
        """Claims and starts jobs until cancelled."""
        try:
            while True:
                job = await asyncio.to_thread(self.jobs.claim_next, RUNNER)
                if job is None:
                    await asyncio.sleep(self.settings.poll_seconds)
                    continue
                task = asyncio.create_task(self._guarded(job, self._launch(job)))
                self._tasks[job.id] = task
                task.add_done_callback(self._forget)
        finally:
            for task in list(self._tasks.values()):
                task.cancel()

    async def _guarded(self, job: JobView, work: Any) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("kubernetes training job failed in the runner", extra={"job_id": job.id})
            await asyncio.to_thread(
                self.jobs.fail, job.id, "runner_error", f"{type(exc).__name__}: {exc}"
            )

    async def _launch(self, job: JobView) -> None:
        job_dir = self.work_dir / job.id
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        train_file = job_dir / "train.jsonl"
        data = await asyncio.to_thread(read_bytes, self.blobs, f"{job.id}-train")
        await asyncio.to_thread(train_file.write_bytes, data)
        config = trainer_config(
            job, train_file=train_file, output_dir=job_dir / "output", dtype=self.settings.dtype
        )
        config_path = job_dir / "config.json"
        await asyncio.to_thread(config_path.write_bytes, orjson.dumps(config))
        manifest = job_manifest(job, self.settings, config_path)
        name = manifest["metadata"]["name"]
        await asyncio.to_thread(self.batch.create_namespaced_job, self.namespace, manifest)
        await asyncio.to_thread(self.jobs.set_runner_ref, job.id, name)
        await asyncio.to_thread(
            self.jobs.add_event, job.id, "info", f"Kubernetes Job {name} created"
        )
        await self._follow(job, name)

    async def _follow(self, job: JobView, name: str) -> None:
        recorder = ProgressRecorder(self.jobs, self.blobs, job.id)
        tail: deque[str] = deque(maxlen=self.settings.log_tail_lines)
        cancel = asyncio.create_task(self._watch_cancel(job.id, name))
        try:
            pod = await asyncio.to_thread(self._wait_for_pod, name)
            if pod is not None:
                await asyncio.to_thread(self._stream_log, pod, recorder, tail)
            outcome, reason = "Deleted", "the Job was deleted"
            if await asyncio.to_thread(self.jobs.status_of, job.id) != CANCELLED:
                outcome, reason = await asyncio.to_thread(self._wait_for_outcome, name)
        finally:
            cancel.cancel()
        status = await asyncio.to_thread(self.jobs.status_of, job.id)
        if status == CANCELLED:
            steps = recorder.outcome.checkpoints
            kept = f"; last checkpoint at step {steps[-1]}" if steps else ""
            await asyncio.to_thread(
                self.jobs.add_event, job.id, "info", f"Trainer stopped after the cancel{kept}"
            )
            return
        if status != RUNNING:
            return
        done = recorder.outcome.done
        if outcome != "Complete" or done is None:
            message = f"the Kubernetes Job {name} failed: {reason or 'no finished adapter'}"
            if tail:
                message += ". Trainer log (last lines):\n" + "\n".join(tail)
            await asyncio.to_thread(self.jobs.fail, job.id, "trainer_failed", message)
            return
        await self.promotion.finish(job, Path(str(done["adapter_dir"])), done)

    def _wait_for_pod(self, name: str) -> str | None:
        """The Job's pod once it has started (or finished), None if the Job ended without one."""
        from kubernetes.client.exceptions import ApiException

        while True:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={name}")
            for pod in pods.items:
                if pod.status and pod.status.phase in ("Running", "Succeeded", "Failed"):
                    return str(pod.metadata.name)
            try:
                job = self.batch.read_namespaced_job(name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            if _condition(job) is not None:
                return None
            time.sleep(self.settings.poll_seconds)

    def _stream_log(self, pod: str, recorder: ProgressRecorder, tail: deque[str]) -> None:
        response = self.core.read_namespaced_pod_log(
            pod, self.namespace, follow=True, _preload_content=False
        )
        try:
            buffer = b""
            for chunk in response.stream(64 * 1024):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", errors="replace").strip()
                    if line:
                        tail.append(line)
                        recorder.handle_line(line)
            if buffer.strip():
                line = buffer.decode("utf-8", errors="replace").strip()
                tail.append(line)
                recorder.handle_line(line)
        finally:
            response.release_conn()

    def _wait_for_outcome(self, name: str) -> tuple[str, str]:
        """Watches the one Job (field selector on its name) until it is Complete or Failed."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        try:
            job = self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return "Deleted", "the Job was deleted"
            raise
        found = _condition(job)
        if found is not None:
            return found
        stream = watch.Watch()
        try:
            for event in stream.stream(
                self.batch.list_namespaced_job,
                self.namespace,
                field_selector=f"metadata.name={name}",
                resource_version=job.metadata.resource_version,
                timeout_seconds=self.settings.kubernetes_watch_seconds,
            ):
                if event["type"] == "DELETED":
                    return "Deleted", "the Job was deleted"
                found = _condition(event["object"])
                if found is not None:
                    return found
        finally:
            stream.stop()
        return "Unknown", "the watch ended before the Job finished"

    async def _watch_cancel(self, job_id: str, name: str) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            if await asyncio.to_thread(self.jobs.status_of, job_id) == CANCELLED:
                break
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                self.batch.delete_namespaced_job,
                name,
                self.namespace,
                propagation_policy="Background",
            )


def _condition(job: Any) -> tuple[str, str] | None:
    """("Complete" | "Failed", reason) once the Job has finished, else None."""
    for cond in (job.status.conditions or []) if job.status else []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return str(cond.type), str(cond.reason or cond.message or "")
    return None
