"""Make the synthetic set that a manifest's `generator` block describes, when its files are missing."""

from __future__ import annotations

import json
from pathlib import Path

from coronary_calcium.errors import InputError
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.synth.config import SynthConfig
from coronary_calcium.synth.dataset import generate_dataset

_SCAN_KEYS = ("patient_id", "scan_id", "image", "reference", "truth", "split")


def regenerate_from_manifest(manifest_path: str | Path, *, overwrite: bool = False, workers: int | None = None) -> bool:
    """Generate the manifest's synthetic set into its data_root unless every file is already there.

    The freshly generated set's own manifest must list exactly the scans this manifest lists; otherwise the
    manifest and the generator disagree and nothing is kept.

    Returns:
        True when the set was generated, False when it was already complete.
    """
    manifest = load_manifest(manifest_path, check_files=False)
    if manifest.generator is None:
        raise InputError(manifest.path, "has no 'generator' block: it does not describe a synthetic set")
    if not manifest.missing_files() and not overwrite:
        return False
    config = SynthConfig.from_dict(manifest.generator["config"])
    root = manifest.data_root
    if root == manifest.path.parent:
        raise InputError(manifest.path, "data_root must be a folder of its own for a generated set, not '.'")
    generated = generate_dataset(root, config, overwrite=True, workers=workers)
    made = json.loads(Path(generated).read_text())
    want = [{k: s[k] for k in _SCAN_KEYS if k in s} for s in manifest.raw["scans"]]
    got = [{k: s[k] for k in _SCAN_KEYS if k in s} for s in made["scans"]]
    if want != got:
        raise InputError(
            manifest.path,
            f"its scans differ from what the generator makes with its config (first differing: "
            f"{next((w, g) for w, g in zip(want + [None] * len(got), got + [None] * len(want)) if w != g)}); "
            f"regenerate the manifest from {generated}",
        )
    return True
