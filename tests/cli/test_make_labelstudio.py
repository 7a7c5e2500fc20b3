"""`make labelstudio` keeps Label Studio's data (projects, tasks, annotations) unless asked to
wipe it with LABEL_STUDIO_FRESH=1: curation's database maps its batches to those projects."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from loomstack_curation.labelstudio_server import prepare_data_dir
from support import ROOT


def _dry_run(*args: str) -> str:
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", "labelstudio", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_make_labelstudio_keeps_the_data_unless_asked_to_wipe_it() -> None:
    assert "--fresh" not in _dry_run()
    assert "--fresh" in _dry_run("LABEL_STUDIO_FRESH=1")


def test_the_data_dir_is_kept_or_wiped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "label_studio.sqlite3").write_text("projects")
    prepare_data_dir(data, fresh=False)
    assert (data / "label_studio.sqlite3").read_text() == "projects"
    prepare_data_dir(data, fresh=True)
    assert not data.exists()
    assert "curation imports its batches again" in capsys.readouterr().out
