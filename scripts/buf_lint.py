"""Runs `buf lint` and `buf build` on protos/ offline.

buf's remote dependency registry is not reachable here, so the googleapis protos we import are
copied from the installed googleapis-common-protos package into `.build/buf-deps` (ignored by
git), which buf.yaml declares as a second module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.api import annotations_pb2

ROOT = Path(__file__).resolve().parent.parent
DEPS = ROOT / ".build" / "buf-deps"


def main() -> int:
    source = Path(annotations_pb2.__file__).resolve().parent.parent
    shutil.rmtree(DEPS, ignore_errors=True)
    for package in ("api", "rpc", "longrunning"):
        shutil.copytree(
            source / package, DEPS / "google" / package, ignore=shutil.ignore_patterns("*.py*")
        )
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    for args in (["lint"], ["build", "-o", str(ROOT / ".build" / "image.binpb")]):
        result = subprocess.run([buf, *args], cwd=ROOT, check=False)
        if result.returncode != 0:
            print(f"buf {args[0]} failed", file=sys.stderr)
            return result.returncode
    print("buf lint and build passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
