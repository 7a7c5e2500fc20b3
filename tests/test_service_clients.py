"""The kit's service client under curation's and training's verbs: a file larger than the gRPC
message limit goes up and comes back through each service's client with flat memory (chunks
both ways, never the whole file), against a real inference service (api role)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import InferenceProcess

from loomstack_kit.channels import MAX_MESSAGE_BYTES

SIZE = 96 * 1024 * 1024  # 1.5 times the gRPC message limit
assert SIZE > MAX_MESSAGE_BYTES

# Run in a process of its own, so its peak RSS is the client's alone: uploads SIZE bytes of
# JSONL produced chunk by chunk, then streams the file's lines back, hashing both sides.
CLIENT = """
import hashlib, json, resource, sys
kind, address = sys.argv[1], sys.argv[2]
from loomstack_kit.settings import ServiceSettings
if kind == "curation":
    from loomstack_curation.inference_client import InferenceClient
else:
    from loomstack_training.inference import InferenceClient
client = InferenceClient(address, ServiceSettings())
line = b'{"messages": [{"role": "user", "content": "' + b"x" * 1000 + b'"}]}'
lines = SIZE // (len(line) + 1)
sent = hashlib.sha256()
def produce():
    block = (line + b"\\n") * 1024
    for _ in range(lines // 1024):
        sent.update(block)
        yield block
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
file_id = client.upload("p-mem", "big.jsonl", produce(), "fine-tune")
after_upload = peak()
got, count = hashlib.sha256(), 0
for row in client.files.lines("p-mem", file_id):
    got.update(row + b"\\n")
    count += 1
print(json.dumps({
    "before": before, "after_upload": after_upload, "after_download": peak(),
    "lines": count, "expected_lines": lines // 1024 * 1024,
    "same": got.hexdigest() == sent.hexdigest(), "file_id": file_id,
}))
""".replace("SIZE", str(SIZE))


@pytest.fixture(scope="module")
def inference_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceProcess]:
    from support import api_only_inference

    with api_only_inference(tmp_path_factory.mktemp("inference-clients")) as process:
        yield process


@pytest.mark.parametrize("kind", ["curation", "training"])
def test_a_file_past_the_message_limit_passes_with_flat_memory(
    kind: str, inference_api: InferenceProcess, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, kind, inference_api.address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["same"] and result["lines"] == result["expected_lines"] > 0
    grew = max(result["after_upload"], result["after_download"]) - result["before"]
    # Holding the file would cost 96 MiB at least (twice that joined). Streamed, growth is the
    # gRPC buffers and lazily imported modules: 0 MiB (training) and 18.6 MiB (curation) here.
    assert grew < 32 * 1024 * 1024, f"peak RSS grew by {grew / 2**20:.1f} MiB"
