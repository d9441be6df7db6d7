"""MONAI Model Zoo readiness: the zoo's offline checks of the bundle, and a zip of it that runs elsewhere.

:func:`check_bundle` lists what the zoo's CI would object to: missing required files, metadata that does not validate
against the zoo's metadata schema, JSON configs not indented by 4 spaces, files over 25 MB, and black / isort / flake8
(line length 120) problems in the bundle's Python files, and configs lacking an id of MONAI's required train / infer
bundle properties.

:func:`pack_bundle` writes a zip holding the bundle folder (configs, docs, LICENSE, large_files.yml; never the
``runs/`` outputs) and, by default, this package's source at ``<bundle>/scripts/coronary_calcium`` so the bundle runs
where ``coronary-calcium`` is not installed. The configs ``$import coronary_calcium``: after unpacking, make the copy
importable with ``PYTHONPATH=<bundle>/scripts`` (or ``pip install coronary-calcium``). ``scripts/__init__.py`` puts
``scripts/`` on ``sys.path`` when imported, so a config whose ``imports`` list starts with ``"$import scripts"`` also
works when run from the bundle folder (the zoo's convention), without PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from coronary_calcium.errors import InputError
from coronary_calcium.report.files import atomic_path

__all__ = [
    "REQUIRED_FILES",
    "MAX_FILE_BYTES",
    "LINE_LENGTH",
    "DEFAULT_BUNDLE_NAME",
    "check_bundle",
    "missing_properties",
    "bundle_files",
    "large_file_paths",
    "pack_bundle",
    "add_pack_arguments",
    "cmd_pack",
    "add_check_arguments",
    "cmd_check_bundle",
]

#: Files every zoo bundle must have (relative to the bundle root).
REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "docs/README.md",
    "docs/data_license.txt",
    "LICENSE",
    "large_files.yml",
)
#: The zoo's limit for a file committed to the bundle (larger files go to large_files.yml and are downloaded).
MAX_FILE_BYTES = 25 * 1000 * 1000
LINE_LENGTH = 120
#: Folder name of the bundle inside the zip (zoo style: task and data type).
DEFAULT_BUNDLE_NAME = "coronary_calcium_ct_classification"

# Never part of the bundle: training outputs, caches, editor and VCS files.
_EXCLUDED_DIRS = {"runs", "__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".slice_cache", ".git"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".tmp")

_SCRIPTS_INIT = '''"""Bundle scripts: the coronary_calcium package, shipped with the bundle.

Importing this package (``"$import scripts"`` first in a config's ``imports``, run from the bundle folder) puts this
folder on ``sys.path`` so that ``import coronary_calcium`` finds the copy beside it.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
'''


def _excluded(rel: Path) -> bool:
    parts = rel.parts
    return (
        any(p in _EXCLUDED_DIRS for p in parts[:-1])
        or any(p.startswith(".") for p in parts)
        or rel.name.endswith(_EXCLUDED_SUFFIXES)
    )


def large_file_paths(bundle_root: str | os.PathLike) -> set[str]:
    """The ``path`` entries of ``large_files.yml`` (files downloaded on demand, not shipped)."""
    path = Path(bundle_root) / "large_files.yml"
    if not path.is_file():
        return set()
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("large_files", []) if isinstance(data, dict) else []
    return {str(e["path"]).removeprefix("./") for e in entries if isinstance(e, dict) and e.get("path")}


def bundle_files(bundle_root: str | os.PathLike, *, include_large_files: bool = False) -> list[Path]:
    """The bundle's files relative to its root, sorted: without outputs (``runs/``), caches, hidden files and (unless
    ``include_large_files``) the files listed in ``large_files.yml``."""
    root = Path(bundle_root)
    large = set() if include_large_files else large_file_paths(root)
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not _excluded(rel) and rel.as_posix() not in large:
            out.append(rel)
    return sorted(out)


def _json_problems(path: Path, rel: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"{rel}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"]
    variants = {json.dumps(value, indent=4, ensure_ascii=a) for a in (True, False)}
    if not any(text in (v, v + "\n") for v in variants):
        for i, (a, b) in enumerate(zip(text.splitlines(), json.dumps(value, indent=4).splitlines()), 1):
            if a != b:
                return [f"{rel}: not formatted as json.dumps(indent=4) (first difference at line {i}: {a.strip()!r})"]
        return [f"{rel}: not formatted as json.dumps(indent=4) (line count or trailing text differs)"]
    return []


def _metadata_problems(meta_file: Path, schema_path: Path) -> list[str]:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"configs/metadata.json: cannot be read ({e})"]
    try:
        schema = json.loads(Path(schema_path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{schema_path}: the metadata schema cannot be read ({e})"]
    from jsonschema.validators import validator_for

    validator = validator_for(schema)(schema)
    problems = []
    for err in sorted(validator.iter_errors(meta), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        problems.append(f"configs/metadata.json: {where}: {err.message}")
    version = meta.get("version")
    if isinstance(meta.get("changelog"), dict) and version not in meta["changelog"]:
        problems.append(f"configs/metadata.json: version {version!r} has no changelog entry")
    return problems


def _style_problems(root: Path, files: Sequence[Path]) -> list[str]:
    """black, isort and flake8 at line length 120 over ``files`` (relative to ``root``)."""
    if not files:
        return []
    names = [f.as_posix() for f in files]
    tools = {
        "black": ["-m", "black", "--check", "--quiet", "--line-length", str(LINE_LENGTH)],
        "isort": ["-m", "isort", "--check-only", "--quiet", "--profile", "black", "--line-length", str(LINE_LENGTH)],
        "flake8": ["-m", "flake8", "--max-line-length", str(LINE_LENGTH), "--extend-ignore", "E203,W503"],
    }
    problems = []
    for tool, args in tools.items():
        try:
            r = subprocess.run([sys.executable, *args, *names], cwd=root, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            problems.append(f"{tool}: timed out")
            continue
        if r.returncode == 0:
            continue
        out = (r.stdout + r.stderr).strip()
        if "No module named" in out:
            problems.append(f"{tool}: not installed ({out.splitlines()[-1]})")
            continue
        lines = [line for line in out.splitlines() if line.strip() and not line.startswith(("Oh no", "All done"))]
        problems += [f"{tool}: {line}" for line in lines[:20]] or [f"{tool}: exit status {r.returncode}"]
    return problems


#: Configs checked for MONAI's required bundle properties, by workflow type.
PROPERTY_CHECKS = {
    "train": (("train.json",), ("train.json", "multi_gpu_train.json")),
    "infer": (("inference.json",),),
}


def missing_properties(config_files: str | os.PathLike | Sequence[str | os.PathLike], workflow_type: str) -> list[str]:
    """Required bundle properties of ``workflow_type`` ("train" or "infer") whose config id is absent from the merged
    ``config_files``, as ``"name (id 'x')"``. Parse only: nothing is resolved, no data is read (MONAI's
    ``ConfigWorkflow.check_properties`` resolves every property, and raises KeyError rather than listing a missing
    one)."""
    from monai.bundle import ConfigParser
    from monai.bundle.properties import InferProperties, TrainProperties
    from monai.utils import BundleProperty, BundlePropertyConfig

    props = {"train": TrainProperties, "infer": InferProperties}.get(workflow_type)
    if props is None:
        raise InputError(workflow_type, "workflow type must be 'train' or 'infer'")
    files = [str(config_files)] if isinstance(config_files, (str, os.PathLike)) else [str(f) for f in config_files]
    parser = ConfigParser()
    parser.read_config(f=files)
    missing = []
    for name, prop in props.items():
        pid = prop.get(BundlePropertyConfig.ID, name)
        if prop.get(BundleProperty.REQUIRED, False) and pid not in parser:
            missing.append(f"{name} (id {pid!r})")
    return missing


def check_bundle(bundle_root: str | os.PathLike, schema_path: str | os.PathLike) -> list[str]:
    """Problems the Model Zoo's checks would report for the bundle at ``bundle_root``; ``[]`` when ready.

    Checks: the required files (:data:`REQUIRED_FILES`); ``configs/metadata.json`` against the zoo's metadata schema
    at ``schema_path`` (a local copy, e.g. meta_schema_20240725.json: nothing is downloaded) and a changelog entry for
    its version; every JSON file under ``configs/`` formatted as ``json.dumps(indent=4)``; no file over 25 MB (the
    files in ``large_files.yml`` and the ``runs/`` outputs are not part of the bundle); black, isort (profile black)
    and flake8 at line length 120 over the bundle's Python files; the ids of MONAI's required bundle properties in
    train.json (also with multi_gpu_train.json) and inference.json (:func:`missing_properties`).
    """
    root = Path(bundle_root)
    if not root.is_dir():
        return [f"{root}: not a folder"]
    problems = [f"{rel}: required file missing" for rel in REQUIRED_FILES if not (root / rel).is_file()]
    meta = root / "configs" / "metadata.json"
    if meta.is_file():
        problems += _metadata_problems(meta, Path(schema_path))
    for workflow_type, combos in PROPERTY_CHECKS.items():
        for combo in combos:
            paths = [root / "configs" / name for name in combo]
            if not all(p.is_file() for p in paths):
                continue  # reported as a missing required file
            try:
                missing = missing_properties(paths, workflow_type)
            except Exception as e:  # noqa: BLE001 - an unreadable config is a finding, not a crash
                problems.append(f"{' + '.join(combo)}: cannot be parsed ({type(e).__name__}: {e})")
                continue
            if missing:
                problems.append(f"{' + '.join(combo)}: lacks required {workflow_type} properties: {', '.join(missing)}")
    files = bundle_files(root)
    for rel in files:
        if rel.parts[0] == "configs" and rel.suffix == ".json":
            problems += _json_problems(root / rel, rel.as_posix())
        size = (root / rel).stat().st_size
        if size > MAX_FILE_BYTES:
            problems.append(f"{rel.as_posix()}: {size / 1e6:.1f} MB, over the 25 MB limit (list it in large_files.yml)")
    problems += _style_problems(root, [f for f in files if f.suffix == ".py"])
    return problems


def _package_files() -> Iterable[tuple[Path, str]]:
    """(file, path relative to the package's parent) of every file of the coronary_calcium package."""
    import coronary_calcium

    pkg = Path(coronary_calcium.__file__).resolve().parent
    for path in sorted(pkg.rglob("*")):
        rel = path.relative_to(pkg.parent)
        if path.is_file() and not _excluded(rel):
            yield path, rel.as_posix()


def pack_bundle(
    bundle_root: str | os.PathLike,
    out_zip: str | os.PathLike,
    include_package: bool = True,
    *,
    name: str = DEFAULT_BUNDLE_NAME,
    include_large_files: bool = False,
) -> Path:
    """Zip the bundle as ``<name>/...`` (configs, docs, LICENSE, large_files.yml, any scripts; never ``runs/``).

    include_package: also ship this package's source at ``<name>/scripts/coronary_calcium`` (with a
    ``scripts/__init__.py`` that puts ``scripts/`` on ``sys.path`` when imported); after unpacking, run with
    ``PYTHONPATH=<name>/scripts python -m monai.bundle run --bundle_root <name> ...`` (see the module docstring).
    include_large_files: also pack files listed in ``large_files.yml`` (e.g. a trained ``models/model.pt``).
    The zip is written atomically; returns its path.
    """
    root = Path(bundle_root)
    if not (root / "configs").is_dir():
        raise InputError(root, "not a bundle folder (no configs/)")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(name, "bundle folder name must be a plain name")
    out = Path(out_zip)
    files = [
        f for f in bundle_files(root, include_large_files=include_large_files) if (root / f).resolve() != out.resolve()
    ]
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in files:
                zf.write(root / rel, f"{name}/{rel.as_posix()}")
            if include_package:
                packed = {rel.as_posix() for rel in files}
                if "scripts/__init__.py" not in packed:
                    zf.writestr(f"{name}/scripts/__init__.py", _SCRIPTS_INIT)
                for path, rel in _package_files():
                    zf.write(path, f"{name}/scripts/{rel}")
    return out


# --------------------------------------------------------------------------------------------------
# Command line (wired into `coronary-calcium pack` / `check-bundle` by cli.py)


def _default_bundle_root() -> Path:
    from coronary_calcium.train.bundle import BUNDLE_ROOT

    return BUNDLE_ROOT


def add_pack_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``coronary-calcium pack``."""
    p.add_argument("--out", type=Path, required=True, help="zip file to write")
    p.add_argument("--bundle-root", type=Path, default=None, help="bundle folder (default: the repository's bundle/)")
    p.add_argument("--name", default=DEFAULT_BUNDLE_NAME, help="folder name of the bundle inside the zip")
    p.add_argument(
        "--no-package",
        action="store_true",
        help="do not ship the coronary_calcium source under scripts/ (users pip install it)",
    )
    p.add_argument(
        "--include-large-files",
        action="store_true",
        help="also pack files listed in large_files.yml (e.g. a trained models/model.pt)",
    )


def cmd_pack(args: argparse.Namespace) -> int:
    """Run ``coronary-calcium pack``."""
    root = args.bundle_root or _default_bundle_root()
    out = pack_bundle(
        root,
        args.out,
        include_package=not args.no_package,
        name=args.name,
        include_large_files=args.include_large_files,
    )
    print(f"wrote {out}")
    if not args.no_package:
        print(
            f"after unzipping: PYTHONPATH={args.name}/scripts python -m monai.bundle run --bundle_root {args.name} "
            f"--config_file {args.name}/configs/train.json --manifest <data_manifest.json>"
        )
    return 0


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``coronary-calcium check-bundle``."""
    p.add_argument(
        "--schema", type=Path, required=True, help="local copy of the zoo's metadata schema (meta_schema_20240725.json)"
    )
    p.add_argument("--bundle-root", type=Path, default=None, help="bundle folder (default: the repository's bundle/)")


def cmd_check_bundle(args: argparse.Namespace) -> int:
    """Run ``coronary-calcium check-bundle``: print each problem; 0 when none, 1 otherwise."""
    root = args.bundle_root or _default_bundle_root()
    problems = check_bundle(root, args.schema)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{root}: " + (f"{len(problems)} problem(s)" if problems else "ready for the Model Zoo checks"))
    return 1 if problems else 0
