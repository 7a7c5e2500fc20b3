"""`make up` installs what the stack it starts needs: the trainer's environment too, once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import ROOT


def _dry_run(*args: str) -> str:
    """What `make` would run (`-n`: nothing is run)."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_make_up_installs_the_trainer_environment_once(tmp_path: Path) -> None:
    fresh = _dry_run("up", f"TRAINING_VENV={tmp_path / 'training-venv'}")
    assert f"{tmp_path / 'training-venv'}/bin/pip install" in fresh
    assert "unsloth" in fresh
    # The environment `make test` built before the tests (stamped): nothing to install again.
    assert (ROOT / ".cache" / "training-venv" / ".installed-training-2026.10").exists()
    assert "unsloth" not in _dry_run("up")
