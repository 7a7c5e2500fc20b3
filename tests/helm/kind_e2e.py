"""End to end on a throwaway kind cluster: images → helm install (CPU) → helm test → a batch.

Needs a Docker engine, `kind` on PATH and internet access (base images, the PostgreSQL image and
the SmolLM2 weights from Hugging Face). Our CI machines have none of these, so this is not part of
`make test`; run it with `make e2e-kind` where you have Docker.

    python tests/helm/kind_e2e.py [--keep] [--cluster loomstack-e2e]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "loomstack"
SCENARIO = CHART / "ci" / "01-cpu-eval.yaml"
BATCH_INPUT = REPO / "examples" / "batch.jsonl"
NAMESPACE = "loomstack"
RELEASE = "loomstack"


def run(*argv: str, capture: bool = False) -> str:
    """Runs a command (list argv, no shell), failing loudly."""
    print("+", " ".join(argv), flush=True)
    result = subprocess.run(argv, check=True, text=True, capture_output=capture)
    return result.stdout if capture else ""


def build_images(registry: str, tag: str) -> list[str]:
    """The CPU inference image and the gateway image, tagged as the chart's defaults expect."""
    inference = f"{registry}/inference:{tag}-cpu"
    gateway = f"{registry}/gateway:{tag}"
    env_build = ["docker", "build", "--progress=plain"]
    run(*env_build, "-f", "docker/inference.Dockerfile", "--build-arg", "VARIANT=cpu",
        "-t", inference, str(REPO))  # fmt: skip
    run(*env_build, "-f", "docker/gateway.Dockerfile", "-t", gateway, str(REPO))
    return [inference, gateway]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def port_forward(kubectl: str, context: str, service: str, remote: int) -> Iterator[str]:
    """`kubectl port-forward` to a Service; yields the local base URL."""
    local = free_port()
    proc = subprocess.Popen(
        [
            kubectl,
            "--context",
            context,
            "-n",
            NAMESPACE,
            "port-forward",
            f"svc/{service}",
            f"{local}:{remote}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                break
            time.sleep(0.5)
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(10)


def run_batch(base_url: str, api_key: str) -> None:
    """Uploads examples/batch.jsonl, creates a batch and waits for its output file."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    with BATCH_INPUT.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 1800
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise SystemExit(f"batch {batch.id} still {batch.status} after 30 minutes")
        time.sleep(5)
        batch = client.batches.retrieve(batch.id)
        print(f"batch {batch.id}: {batch.status} {batch.request_counts}", flush=True)
    if batch.status != "completed" or not batch.output_file_id:
        raise SystemExit(f"batch ended {batch.status}: {batch.errors}")
    output = client.files.content(batch.output_file_id).text
    print(output.splitlines()[0][:400])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="loomstack-e2e")
    parser.add_argument("--helm", default=str(REPO / ".tools" / "bin" / "helm"))
    parser.add_argument("--kubectl", default=str(REPO / ".tools" / "bin" / "kubectl"))
    parser.add_argument("--registry", default="ghcr.io/loomstack")
    parser.add_argument("--tag", default="0.1.0")
    parser.add_argument("--keep", action="store_true", help="keep the cluster afterwards")
    args = parser.parse_args()

    missing = [tool for tool in ("docker", "kind") if shutil.which(tool) is None]
    if missing:
        print(f"make e2e-kind needs {' and '.join(missing)} on PATH (and a running Docker engine)")
        return 2
    context = f"kind-{args.cluster}"
    images = build_images(args.registry, args.tag)
    clusters = run("kind", "get", "clusters", capture=True).split()
    if args.cluster not in clusters:
        run("kind", "create", "cluster", "--name", args.cluster, "--wait", "120s")
    try:
        for image in images:
            run("kind", "load", "docker-image", image, "--name", args.cluster)
        run(args.helm, "upgrade", "--install", RELEASE, str(CHART), "--kube-context", context,
            "--namespace", NAMESPACE, "--create-namespace", "--values", str(SCENARIO),
            "--wait", "--timeout", "30m")  # fmt: skip
        run(args.kubectl, "--context", context, "-n", NAMESPACE, "get", "pods", "-o", "wide")
        run(args.helm, "test", RELEASE, "--kube-context", context, "--namespace", NAMESPACE,
            "--logs")  # fmt: skip
        secret = f"{RELEASE}-api-keys"
        keys = run(args.kubectl, "--context", context, "-n", NAMESPACE, "get", "secret", secret,
                   "-o", "jsonpath={.data.api-keys}", capture=True)  # fmt: skip
        api_key = base64.b64decode(keys).decode().split(",")[0].split(":")[0]
        with port_forward(args.kubectl, context, f"{RELEASE}-gateway", 80) as url:
            run_batch(url, api_key)
        print("e2e-kind: passed")
        return 0
    finally:
        if not args.keep:
            run("kind", "delete", "cluster", "--name", args.cluster)


if __name__ == "__main__":
    sys.exit(main())
