"""Whether the `local` runner can start a trainer: the trainer environment's python exists and
finds the Unsloth stack.

The trainer runs in its own virtual environment (`make training-install`:
`.cache/training-venv`), never the service's. Without it a job used to fail with the
subprocess's `FileNotFoundError`, or with the trainer's `ModuleNotFoundError` after the job had
started; the runner now checks first and fails the job with what to install.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

# What trainer.py imports from the trainer environment.
REQUIRED_MODULES = ("unsloth", "trl", "transformers", "peft")
CHECK_TIMEOUT_SECONDS = 60.0
INSTALL_HINT = (
    "install the trainer environment with `make training-install` (it builds "
    ".cache/training-venv; `make up` does it too) or point LOOMSTACK_TRAINING_TRAINER_PYTHON "
    "at a Python that has Unsloth"
)
# Finds the modules without importing them (importing Unsloth takes seconds).
_PROBE = (
    "import importlib.util, sys; "
    f"missing = [m for m in {REQUIRED_MODULES!r} if importlib.util.find_spec(m) is None]; "
    "print(' '.join(missing)); sys.exit(3 if missing else 0)"
)


def resolve(python: str) -> str | None:
    """The executable `python` names (a path, or a name on PATH), if it exists."""
    if "/" not in python:
        return shutil.which(python)
    path = Path(python)
    return str(path) if path.is_file() else None


async def problem(python: str) -> str | None:
    """Why no trainer can run with `python`, or None when it can."""
    executable = resolve(python)
    if executable is None:
        return f"the trainer environment is not installed: {python} does not exist; {INSTALL_HINT}"
    try:
        proc = await asyncio.create_subprocess_exec(
            executable,
            "-c",
            _PROBE,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        return f"the trainer's python {python} cannot be started ({exc.strerror}); {INSTALL_HINT}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"the trainer's python {python} did not answer in {CHECK_TIMEOUT_SECONDS:.0f} s"
    if proc.returncode == 0:
        return None
    missing = out.decode(errors="replace").split()
    if missing:
        return (
            f"the trainer's python {python} has no {', '.join(missing)}: it is not the "
            f"trainer environment; {INSTALL_HINT}"
        )
    return f"the trainer's python {python} failed to run (exit status {proc.returncode})"
