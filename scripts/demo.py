"""`make demo`: start the local stack and run the main job on examples/batch.jsonl.

Starts (or reuses) the local stack with `loomstack up`, submits the example batch through the
OpenAI-compatible API with a live progress bar, and prints the summary and where the output and
error files are. The stack keeps running afterwards (`make down` stops it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main() -> int:
    loomstack = str(BIN / "loomstack")
    up = subprocess.run([loomstack, "up"], cwd=ROOT, check=False)
    if up.returncode != 0:
        print("demo: the local stack did not start (see the log tail above)", file=sys.stderr)
        return up.returncode
    submit = subprocess.run(
        [
            loomstack,
            "batch",
            "submit",
            str(ROOT / "examples" / "batch.jsonl"),
            "--metadata",
            "source=make-demo",
            "--wait",
            "--download",
            str(ROOT / ".loomstack" / "demo-output"),
        ],
        cwd=ROOT,
        check=False,
    )
    print("\nThe stack is still running: try the openai client against http://127.0.0.1:8080/v1,")
    print("`loomstack batch list`, or stop it with `make down`.")
    return submit.returncode


if __name__ == "__main__":
    sys.exit(main())
