"""`make demo-aris`: the Aris plugin's loop on the embedded default, on CPU, in a few minutes.

1. Label Studio and the local stack with the Aris plugin enabled (`LOOMSTACK_PLUGINS=aris`;
   a running stack without it is restarted);
2. a CANDIDATE conquest per profile of plugins/aris/examples/candidates.jsonl (Aristotle);
3. one batch per conquest on the real engine, prompted with the `aris.candidate` schema's own
   prompt and structured output; `metadata.conquest_id` is all the plugin needs: its result
   handlers import the answers through curation into the schema's Label Studio project and
   record the analysis in Aristotle;
4. gold stars on most tasks (through `/v1/curation`, as a curator's click in Label Studio would
   be): each becomes the conquest's VICTORY and a rating row; VICTORY set through the plugin's
   API on the others: the gold star appears on their Label Studio tasks;
5. Eidos in-context-learning examples, and an `aris.aristotle` snapshot of the VICTORY
   conquests that a fine-tuning job accepts (the job is cancelled again: `make demo` shows a
   whole fine-tune).

Every failure names its stage and the log to read. The stack and Label Studio keep running
(`make down` stops both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from demo import BIN, ROOT, StageFailed, Stages, base_model, console, err, start_label_studio

from loomstack_cli.gateway_client import CliError, base_url, call, client

PLUGIN = "aris"
SCHEMA = "aris.candidate"
CANDIDATES = ROOT / "plugins" / "aris" / "examples" / "candidates.jsonl"
PHILOSOPHER = "demo@loomstack.local"
DOMAIN = "recruiting"
REVERSE = 2  # conquests whose VICTORY is set through the plugin's API (→ gold star)


def aris(method: str, path: str, **kwargs: Any) -> Any:
    return call(method, f"/plugins/{PLUGIN}{path}", **kwargs).json()


def wait(what: str, check: Any, timeout: float = 300, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    with console.status(what):
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StageFailed(f"{what}: not done within {timeout:.0f} s")
            time.sleep(interval)


def stack_with_plugin(started_label_studio: bool, home: Path) -> None:
    """The local stack with the plugin; restarted if it runs without it (or without the Label
    Studio connection it needs)."""
    loomstack = str(BIN / "loomstack")
    env = {**os.environ, "LOOMSTACK_PLUGINS": PLUGIN}
    if (home / "run" / "gateway.url").exists():
        try:
            listed = call("GET", "/plugins").json()["data"]
            enabled = any(p["id"] == PLUGIN and p["state"] == "loaded" for p in listed)
        except CliError:
            enabled = False
        if started_label_studio or not enabled:
            console.print(f"restarting the stack with the {PLUGIN} plugin")
            subprocess.run([loomstack, "down", "--no-label-studio"], cwd=ROOT, env=env, check=False)
    done = subprocess.run([loomstack, "up"], cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise StageFailed(f"loomstack up exited with code {done.returncode}", home / "logs")


def conquests() -> list[dict[str, Any]]:
    people = [json.loads(x) for x in CANDIDATES.read_text().splitlines() if x.strip()]
    made = []
    for person in people:
        made.append(
            {
                **person,
                **aris(
                    "POST",
                    "/conquests",
                    json={
                        "type": "CANDIDATE",
                        "title": person["name"],
                        "description": person["profile"],
                        "philosopher": PHILOSOPHER,
                        "domain": DOMAIN,
                        "use_as_example": True,
                    },
                ),
            }
        )
    console.print(f"{len(made)} CANDIDATE conquests in Aristotle (status DRAFT)")
    return made


def batches(made: list[dict[str, Any]], model: str) -> None:
    """A batch per conquest: the schema's prompt and structured output, the conquest's id."""
    api = client()
    prompt = call("GET", f"/curation/schemas/{SCHEMA}/prompt").json()
    ids = []
    for conquest in made:
        line = {
            "custom_id": conquest["custom_id"],
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [
                    {"role": "system", "content": prompt["system_prompt"]},
                    {"role": "user", "content": conquest["profile"]},
                ],
                "response_format": prompt["response_format"],
                "temperature": 0,
                "max_tokens": 80,
            },
        }
        uploaded = api.files.create(
            file=("conquest.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch"
        )
        batch = api.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"conquest_id": conquest["id"], "conquest_type": "CANDIDATE"},
        )
        conquest["batch_id"] = batch.id
        ids.append(batch.id)

    def finished() -> bool:
        states = [api.batches.retrieve(i).status for i in ids]
        bad = [s for s in states if s in ("failed", "expired", "cancelled")]
        if bad:
            raise StageFailed(f"a conquest's batch ended {bad[0]}")
        return all(s == "completed" for s in states)

    wait(f"running {len(ids)} batches on the engine", finished)
    console.print(f"{len(ids)} batches completed")


def analysed(made: list[dict[str, Any]]) -> None:
    """The plugin's handlers: the analysis in Aristotle, the tasks in Label Studio."""

    def task_of(conquest: dict[str, Any]) -> dict[str, Any] | None:
        data = call("GET", "/curation/tasks", params={"batch_id": conquest["batch_id"]}).json()
        return data["data"][0] if data["data"] else None

    for conquest in made:
        wait(
            f"the analysis of {conquest['id']}",
            lambda c=conquest: aris("GET", f"/conquests/{c['id']}")["status"] == "COMPLETED",
        )
        conquest["task"] = wait(
            f"the Label Studio task of {conquest['id']}", lambda c=conquest: task_of(c)
        )
    first = aris("GET", f"/conquests/{made[0]['id']}")
    console.print(
        f"every conquest COMPLETED; {len(made)} tasks in Label Studio project "
        f"{made[0]['task']['label_studio_project_id']} ({SCHEMA}); e.g. {first['title']}: "
        f"{json.dumps(first['response'], ensure_ascii=False)[:160]}",
        highlight=False,
    )


def gold_and_victory(made: list[dict[str, Any]]) -> None:
    starred, reverse = made[:-REVERSE], made[-REVERSE:]
    call(
        "POST",
        "/curation/tasks/gold",
        json={"task_ids": [c["task"]["id"] for c in starred], "gold": True},
    )
    for conquest in starred:
        wait(
            f"VICTORY of {conquest['id']}",
            lambda c=conquest: aris("GET", f"/conquests/{c['id']}")["result"] == "VICTORY",
        )
    console.print(f"{len(starred)} gold stars → {len(starred)} VICTORY conquests (rating rows)")
    for conquest in reverse:
        aris("POST", f"/conquests/{conquest['id']}/result", json={"result": "VICTORY"})
    for conquest in reverse:

        def starred_task(c: dict[str, Any] = conquest) -> bool:
            data = call("GET", "/curation/tasks", params={"batch_id": c["batch_id"]}).json()
            return bool(data["data"] and data["data"][0]["gold"])

        wait(f"the gold star of {conquest['id']} in Label Studio", starred_task)
    console.print(
        f"{len(reverse)} VICTORY set through the plugin's API → gold stars on their tasks"
    )
    health = aris("GET", "/health")
    console.print(
        f"Aristotle: {health['conquests']} conquests, {health['victories']} victories, "
        f"{health['ratings']} ratings, {health['pending_gold_syncs']} pending syncs",
        highlight=False,
    )


def exports(model: str) -> None:
    icl = aris(
        "GET",
        "/icl_examples",
        params={"user_email": PHILOSOPHER, "domain": DOMAIN, "limit": 3, "format": "text"},
    )
    console.print(f"Eidos: {len(icl['data'])} in-context examples for {PHILOSOPHER}")
    snap = call(
        "POST",
        "/curation/snapshots",
        json={
            "name": "demo-aristotle",
            "exporter": "aris.aristotle",
            "exporter_options": {"user_email": PHILOSOPHER, "domain": DOMAIN},
        },
    ).json()
    console.print(
        f"{snap['id']}: {snap['name']} v{snap['version']} by exporter {snap['exporter']}, "
        f"{snap['training_examples']} training examples",
        highlight=False,
    )
    job = call(
        "POST",
        "/fine_tuning/jobs",
        json={"model": model, "training_file": snap["training_file_id"], "suffix": "aris"},
    ).json()
    console.print(f"fine-tuning job {job['id']}: {job['status']} (accepted; cancelled again)")
    call("POST", f"/fine_tuning/jobs/{job['id']}/cancel")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=".loomstack")
    parser.add_argument("--label-studio-venv", default=".cache/labelstudio-venv")
    parser.add_argument("--label-studio-dir", default=".loomstack/labelstudio")
    parser.add_argument("--label-studio-port", type=int, default=8089)
    parser.add_argument("--label-studio-user", default="admin@loomstack.local")
    parser.add_argument("--label-studio-password", default="loomstack-admin")
    args = parser.parse_args()
    home = (ROOT / args.home).resolve()
    logs = home / "logs"
    stages = Stages()
    try:
        with stages.stage("Label Studio", ROOT / args.label_studio_dir / "server.log"):
            started = start_label_studio(args, home)
        with stages.stage(f"local stack with the {PLUGIN} plugin", logs):
            stack_with_plugin(started, home)
        with stages.stage("conquests", logs / "curation.log"):
            model = base_model(client())
            made = conquests()
        with stages.stage("a batch per conquest", logs / "inference.log"):
            batches(made, model)
        with stages.stage(
            "analysis + Label Studio tasks (the plugin's handlers)", logs / "curation.log"
        ):
            analysed(made)
        with stages.stage("gold star ⇄ VICTORY", logs / "curation.log"):
            gold_and_victory(made)
        with stages.stage(
            "Eidos examples + Aristotle snapshot + fine-tuning job", logs / "training.log"
        ):
            exports(model)
    except (StageFailed, CliError, httpx.HTTPError) as exc:
        err.print(f"[red]demo-aris: {exc}[/red]", highlight=False)
        if isinstance(exc, StageFailed) and exc.log:
            err.print(f"demo-aris: see {exc.log}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("demo-aris: interrupted")
        return 130
    console.print(stages.table())
    console.print(
        f"\nThe stack runs with the {PLUGIN} plugin: {base_url()}/plugins/{PLUGIN}/conquests, "
        f"Label Studio at http://127.0.0.1:{args.label_studio_port}; `make down` stops everything.",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
