"""Run the bundle's configs from Python (what `coronary-calcium train / evaluate` call), with bad input reported
as one `InputError` rather than a traceback from deep inside the config parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from coronary_calcium.errors import InputError, find_input_error

REPO_ROOT = Path(__file__).resolve().parents[3]
BUNDLE_ROOT = REPO_ROOT / "bundle"


def bundle_config_files(names: Sequence[str], bundle_root: str | Path = BUNDLE_ROOT) -> list[str]:
    """Paths of the named configs (`train`, `evaluate`, ...) in the bundle's configs folder, checked to exist."""
    files = []
    for name in names:
        path = Path(bundle_root) / "configs" / (name if name.endswith(".json") else f"{name}.json")
        if not path.is_file():
            raise InputError(path, "bundle config not found")
        files.append(str(path))
    return files


def training_configs(network: str | None, *extra: str, bundle_root: str | Path = BUNDLE_ROOT) -> list[str]:
    """`train`, then the network's overlay (`configs/networks/<network>.json`, where it has one: the network's own
    defaults, such as VGG16's learning rate), then `extra` (e.g. `evaluate`): the bundle's configs for one network."""
    overlay = Path(bundle_root) / "configs" / "networks" / f"{network}.json"
    return ["train", *([f"networks/{network}"] if network and overlay.is_file() else []), *extra]


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings to config overrides; values are JSON where they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(pair, "an override must look like key=value (e.g. max_epochs=2)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_bundle(
    configs: Sequence[str],
    overrides: dict[str, Any] | None = None,
    bundle_root: str | Path = BUNDLE_ROOT,
) -> Any:
    """Run `initialize`, `run` and `finalize` of the merged configs (as `python -m monai.bundle run` does) and
    return the parser so callers can read resolved ids (output_dir, ...)."""
    from monai.bundle import ConfigWorkflow

    bundle_root = Path(bundle_root).resolve()
    files = bundle_config_files(configs, bundle_root)
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(bundle_root / "configs" / "metadata.json"),
        logging_file=str(bundle_root / "configs" / "logging.conf"),
        workflow_type="train" if "train" in configs[0] else "infer",
        bundle_root=str(bundle_root),
        **(overrides or {}),
    )
    try:
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    except Exception as e:
        err = find_input_error(e)
        if err is None:
            raise
        raise err from None
    return workflow.parser
