"""The `training` benchmark: the Unsloth trainer through the training service vs. run directly.

Same run, same data (64 chat examples), same hyperparameters: first trainer.py straight from
the trainer environment (what a person with the script would do), then a job created through
the real training service (inference api role for the files and the model registry). It
reports training tokens/s of both, their ratio, and the service's time from
CreateFineTuningJob to the first training step (validation, queueing, process start, model
load, first step). `python bench/training.py --out .cache/bench` writes `<out>/training.json`;
`scenario_training(out)` is the entry point for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import MODEL_NAME, MODEL_PATH, REPO, Service, clean_env, signer, start_inference

from loomstack.inference.v1 import files_pb2, files_pb2_grpc
from loomstack.training.v1 import training_pb2, training_pb2_grpc

TRAINER = REPO / "services" / "training" / "loomstack_training" / "trainer.py"
TRAINER_PYTHON = os.environ.get(
    "LOOMSTACK_TRAINING_TRAINER_PYTHON", str(REPO / ".cache" / "training-venv" / "bin" / "python")
)
QUESTIONS = ("What is 5 plus 6?", "Add 5 and 6.", "Compute 5 + 6.", "5 + 6 = ?")
HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 1,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "max_steps": 10,
    "max_seq_length": 128,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "lora_target_modules": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ],
    "save_steps": 10,
}
SEED = 11


def dataset() -> list[dict[str, Any]]:
    """64 chat examples teaching one distinctive answer."""
    return [
        {
            "messages": [
                {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                {"role": "assistant", "content": "Loomstack says: eleven ducks."},
            ]
        }
        for i in range(64)
    ]


def run_direct(workdir: Path) -> dict[str, Any]:
    """trainer.py on its own: tokens/s of the run, seconds to the first step."""
    data = workdir / "direct" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps(x) + "\n" for x in dataset()))
    config = workdir / "direct" / "config.json"
    config.write_text(
        json.dumps(
            {
                "base_model_path": str(MODEL_PATH),
                "train_file": str(data),
                "output_dir": str(workdir / "direct" / "out"),
                "seed": SEED,
                "dtype": "float32",
                "hyperparameters": HYPERPARAMETERS,
            }
        )
    )
    started = time.time()
    with (workdir / "direct" / "trainer.log").open("wb") as log:
        proc = subprocess.run(
            [TRAINER_PYTHON, str(TRAINER), str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            check=True,
        )
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    steps = [e for e in events if e["event"] == "step"]
    return {
        "tokens_per_second": steps[-1]["tokens_per_second"],
        "trained_tokens": steps[-1]["trained_tokens"],
        "steps": len(steps),
        "seconds_to_first_step": steps[0]["time"] - started,
        "wall_seconds": time.time() - started,
    }


def run_service(workdir: Path) -> dict[str, Any]:
    """The same run as a job of the real training service."""
    inference, _ = start_inference(workdir / "inference", roles="api", enforce_eager=True)
    home = workdir / "training"
    home.mkdir()
    training = Service(
        "training",
        clean_env(
            LOOMSTACK_HOME=str(home),
            LOOMSTACK_TRAINING_PORT_FILE=str(workdir / "training.port"),
            LOOMSTACK_TRAINING_INFERENCE_ADDRESS=f"127.0.0.1:{inference.port}",
            LOOMSTACK_TRAINING_TRAINER_PYTHON=TRAINER_PYTHON,
            LOOMSTACK_TRAINING_POLL_SECONDS="0.5",
            LOOMSTACK_TRAINING_LOG_JSON="false",
        ),
        workdir / "training.log",
        workdir / "training.port",
    )
    try:
        training.start("loomstack_training")
        files = files_pb2_grpc.FileServiceStub(grpc.insecure_channel(f"127.0.0.1:{inference.port}"))
        jobs = training_pb2_grpc.FineTuningServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{training.port}")
        )
        content = "".join(json.dumps(x) + "\n" for x in dataset()).encode()
        file_id = files.UploadFile(
            iter(
                [
                    files_pb2.UploadFileRequest(
                        metadata=files_pb2.UploadFileMetadata(
                            filename="t.jsonl", purpose="fine-tune"
                        )
                    ),
                    files_pb2.UploadFileRequest(chunk=content),
                ]
            ),
            metadata=signer().metadata("default"),
        ).id
        hp = training_pb2.Hyperparameters(**HYPERPARAMETERS)
        created = time.time()
        job = jobs.CreateFineTuningJob(
            training_pb2.CreateFineTuningJobRequest(
                model=MODEL_NAME, training_file=file_id, hyperparameters=hp, seed=SEED
            ),
            metadata=signer().metadata("default"),
            timeout=300,
        )
        final = {
            training_pb2.FINE_TUNING_JOB_STATUS_SUCCEEDED,
            training_pb2.FINE_TUNING_JOB_STATUS_FAILED,
        }
        while (
            current := jobs.GetFineTuningJob(
                training_pb2.GetFineTuningJobRequest(job_id=job.id),
                metadata=signer().metadata("default"),
            )
        ).status not in final:
            time.sleep(0.5)
        if current.status != training_pb2.FINE_TUNING_JOB_STATUS_SUCCEEDED:
            raise RuntimeError(f"job failed: {current.error.message}")
        events = jobs.ListFineTuningJobEvents(
            training_pb2.ListFineTuningJobEventsRequest(job_id=job.id, page_size=1000),
            metadata=signer().metadata("default"),
        ).events
        metrics = sorted((e for e in events if e.type == "metrics"), key=lambda e: e.metrics.step)
        first = metrics[0].create_time.ToNanoseconds() / 1e9
        return {
            "tokens_per_second": metrics[-1].metrics.tokens_per_second,
            "trained_tokens": current.trained_tokens,
            "steps": len(metrics),
            "seconds_create_to_first_step": first - created,
            "wall_seconds": current.finish_time.ToNanoseconds() / 1e9 - created,
        }
    finally:
        training.stop()
        inference.stop()


def scenario_training(out: Path, rounds: int = 3) -> dict[str, Any]:
    """Direct and service runs taking turns (`rounds` of each, so drifting load on a shared
    machine hits both alike); the ratio is of the medians. Writes `<out>/training.json`."""
    direct_runs: list[dict[str, Any]] = []
    service_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        for i in range(rounds):
            work = Path(tmp) / f"round-{i}"
            direct_runs.append(run_direct(work))
            service_runs.append(run_service(work))

    def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(runs, key=lambda r: float(r["tokens_per_second"]))[(len(runs) - 1) // 2]

    direct, service = median(direct_runs), median(service_runs)
    result = {
        "scenario": "training",
        "hyperparameters": HYPERPARAMETERS,
        "examples": 64,
        "rounds": rounds,
        "direct": direct,
        "service": service,
        "direct_runs": direct_runs,
        "service_runs": service_runs,
        "service_vs_direct_tokens_per_second": service["tokens_per_second"]
        / direct["tokens_per_second"],
        "per_round_ratios": [
            s["tokens_per_second"] / d["tokens_per_second"]
            for d, s in zip(direct_runs, service_runs, strict=True)
        ],
        "load_average": os.getloadavg(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "training.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for training.json")
    args = parser.parse_args()
    print(json.dumps(scenario_training(args.out), indent=2))


if __name__ == "__main__":
    main()
