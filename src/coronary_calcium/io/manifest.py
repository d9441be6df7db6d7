"""The data manifest: one JSON file describing a data set, its JSON Schema, validation and path resolution.

Validation collects every problem it finds (so a user fixes them in one go); `load_manifest` raises one
`InputError` listing them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import jsonschema

from coronary_calcium.errors import InputError

SPLITS = ("train", "validation", "test")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
NRRD_SUFFIXES = (".nrrd", ".nhdr")


@dataclass(frozen=True)
class ScanEntry:
    """One scan of the manifest, with absolute paths."""

    patient_id: str
    scan_id: str
    image: Path
    split: str
    labels: Path | None = None
    label_scheme: str = "project"
    coca_xml: Path | None = None
    truth: Path | None = None
    # A score-only reference: {"total", and "LM", "LAD", "LCX", "RCA" where known}, from the manifest's "scores" or
    # read from a COCA scores.xlsx ("coca_scores", row "coca_row") when the manifest is validated.
    reference_scores: dict[str, float] | None = None
    coca_scores: Path | None = None
    coca_row: str | None = None

    @property
    def image_format(self) -> str:
        return image_format(self.image)

    @property
    def has_reference(self) -> bool:
        """Whether the scan has any reference: labels, COCA XML, reference scores (inline or a COCA scores.xlsx) or
        a truth JSON."""
        return any(p is not None for p in (self.labels, self.coca_xml, self.reference_scores, self.coca_scores,
                                           self.truth))

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@dataclass
class Manifest:
    """A loaded, validated manifest."""

    path: Path
    data_root: Path
    scans: list[ScanEntry]
    name: str = ""
    description: str = ""
    generator: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> list[ScanEntry]:
        """The scans of one split, in manifest order."""
        if name not in SPLITS:
            raise InputError(self.path, f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return [s for s in self.scans if s.split == name]

    def missing_files(self) -> list[Path]:
        """Files or folders the manifest names that do not exist."""
        return [p for s in self.scans for p in _entry_paths(s) if not p.exists()]


def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (shipped in the package)."""
    text = resources.files("coronary_calcium").joinpath("schemas/manifest.schema.json").read_text()
    return json.loads(text)


def image_format(path: Path) -> str:
    """'dicom' (a folder), 'nifti', 'metaimage' or 'nrrd', from the path; 'unknown' otherwise."""
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(METAIMAGE_SUFFIXES):
        return "metaimage"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    return "unknown"


def _entry_paths(scan: ScanEntry) -> Iterable[Path]:
    yield scan.image
    for p in (scan.labels, scan.coca_xml, scan.coca_scores, scan.truth):
        if p is not None:
            yield p


def _read_json(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    if path.is_dir():
        return None, [f"{path}: is a folder, not a manifest file"]
    if not path.is_file():
        return None, [f"{path}: manifest file not found"]
    try:
        return json.loads(path.read_bytes().decode("utf-8")), []
    except json.JSONDecodeError as e:
        return None, [f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"]
    except UnicodeDecodeError as e:
        return None, [f"{path}: not a UTF-8 text file ({e.reason})"]


def _schema_problems(path: Path, raw: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(manifest_schema())
    problems = []
    for err in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        problems.append(f"{path}: {where}: {err.message}")
    return problems


def _entries(path: Path, raw: dict[str, Any]) -> tuple[Path, list[ScanEntry]]:
    data_root = (path.parent / raw["data_root"]).resolve()
    entries = []
    for s in raw["scans"]:
        ref = s.get("reference", {})
        entries.append(
            ScanEntry(
                patient_id=s["patient_id"],
                scan_id=s.get("scan_id", s["patient_id"]),
                image=data_root / s["image"],
                split=s["split"],
                labels=data_root / ref["labels"] if "labels" in ref else None,
                label_scheme=ref.get("scheme", "project"),
                coca_xml=data_root / ref["coca_xml"] if "coca_xml" in ref else None,
                truth=data_root / s["truth"] if "truth" in s else None,
                reference_scores={k: float(v) for k, v in ref["scores"].items()} if "scores" in ref else None,
                coca_scores=data_root / ref["coca_scores"] if "coca_scores" in ref else None,
                coca_row=ref.get("coca_row"),
            )
        )
    return data_root, entries


def _outside_problems(path: Path, raw: dict[str, Any], data_root: Path) -> list[str]:
    """Scan paths that leave ``data_root`` (``../``, absolute): refused unless the manifest allows them, so that a
    manifest cannot make a command read (or score) files elsewhere on the system by accident."""
    if raw.get("allow_outside_data_root") is True:
        return []
    problems = []
    for i, s in enumerate(raw["scans"]):
        ref = s.get("reference", {})
        named = [("image", s["image"]), ("truth", s.get("truth")), ("labels", ref.get("labels")),
                 ("coca_xml", ref.get("coca_xml")), ("coca_scores", ref.get("coca_scores"))]
        for what, rel in named:
            if rel is None:
                continue
            # lexical, not resolved: a symlink the data owner placed inside data_root is theirs to keep
            target = Path(os.path.normpath(data_root / rel))
            if not target.is_relative_to(data_root):
                problems.append(f"{path}: scans/{i} ({s.get('scan_id', s['patient_id'])}): {what} {rel!r} is outside "
                                f"data_root {data_root} (set \"allow_outside_data_root\": true to allow it)")
    return problems


def _consistency_problems(path: Path, entries: list[ScanEntry]) -> list[str]:
    problems = []
    seen_scan: dict[str, int] = {}
    split_of: dict[str, tuple[str, int]] = {}
    for i, s in enumerate(entries):
        item = f"{path}: scans/{i} ({s.scan_id})"
        if s.scan_id in seen_scan:
            problems.append(
                f"{item}: repeats scan {s.scan_id!r} of scans/{seen_scan[s.scan_id]} (give each scan of a patient "
                "its own scan_id)"
            )
        seen_scan.setdefault(s.scan_id, i)
        if s.patient_id in split_of and split_of[s.patient_id][0] != s.split:
            first_split, j = split_of[s.patient_id]
            problems.append(
                f"{item}: patient {s.patient_id!r} is in split {s.split!r} here and in {first_split!r} at scans/{j}; "
                "splits are per patient"
            )
        split_of.setdefault(s.patient_id, (s.split, i))
    return problems


def _file_problems(path: Path, entries: list[ScanEntry]) -> list[str]:
    problems = []
    for i, s in enumerate(entries):
        item = f"{path}: scans/{i} ({s.scan_id})"
        if not s.image.exists():
            problems.append(f"{item}: image {s.image} does not exist")
        elif s.image_format == "unknown":
            problems.append(
                f"{item}: image {s.image} is neither a DICOM folder nor a NIfTI (.nii, .nii.gz), MetaImage "
                "(.mhd, .mha) or NRRD (.nrrd, .nhdr) file"
            )
        for what, p in (("labels", s.labels), ("coca_xml", s.coca_xml), ("coca_scores", s.coca_scores),
                        ("truth", s.truth)):
            if p is not None and not p.is_file():
                problems.append(f"{item}: {what} file {p} does not exist")
    return problems


def _resolve_scores(path: Path, entries: list[ScanEntry]) -> tuple[list[ScanEntry], list[str]]:
    """Each scan's reference scores read from its COCA scores.xlsx (each workbook read once); a missing workbook is
    left to `_file_problems`, an unreadable one or a patient without a row is a problem naming the scan."""
    from coronary_calcium.io.coca import coca_score_row, read_coca_scores

    sheets: dict[Path, Any] = {}
    out, problems = [], []
    for i, s in enumerate(entries):
        if s.coca_scores is None or not s.coca_scores.is_file():
            out.append(s)
            continue
        if s.coca_scores not in sheets:
            try:
                sheets[s.coca_scores] = read_coca_scores(s.coca_scores)
            except InputError as e:
                sheets[s.coca_scores] = e
        sheet = sheets[s.coca_scores]
        try:
            if isinstance(sheet, InputError):
                raise sheet
            _, scores = coca_score_row(sheet, s.patient_id, s.coca_row, s.coca_scores)
        except InputError as e:
            problems.append(f"{path}: scans/{i} ({s.scan_id}): {e}")
            out.append(s)
            continue
        out.append(dataclasses.replace(s, reference_scores=dict(scores)))
    return out, problems


def validate_manifest(
    path: str | Path,
    *,
    check_files: bool = True,
    check_images: Callable[[ScanEntry], None] | None = None,
) -> tuple[Manifest | None, list[str]]:
    """Check a manifest: JSON, schema, unique scans, one split per patient, files present, images readable.

    Args:
        path: the manifest file.
        check_files: check that every named file exists.
        check_images: called per scan to read its image (and reference); an `InputError` it raises is recorded.

    Returns:
        The manifest (None when it could not be parsed) and every problem found, each naming its item.
    """
    path = Path(path).resolve()
    raw, problems = _read_json(path)
    if raw is None:
        return None, problems
    problems = _schema_problems(path, raw)
    if problems:
        return None, problems
    data_root, entries = _entries(path, raw)
    problems = _outside_problems(path, raw, data_root)
    if problems:
        return None, problems
    problems = _consistency_problems(path, entries)
    entries, score_problems = _resolve_scores(path, entries)
    problems += score_problems
    manifest = Manifest(
        path=path,
        data_root=data_root,
        scans=entries,
        name=raw.get("name", ""),
        description=raw.get("description", ""),
        generator=raw.get("generator"),
        raw=raw,
    )
    if check_files:
        file_problems = _file_problems(path, entries)
        if file_problems and manifest.generator is not None:
            file_problems.append(
                f"{path}: this synthetic set can be regenerated: coronary-calcium synth --manifest {path}"
            )
        problems += file_problems
    if check_images is not None and not problems:
        for s in entries:
            try:
                check_images(s)
            except InputError as e:
                problems.append(f"{path}: scan {s.scan_id}: {e}")
    return manifest, problems


def problems_error(path: str | Path, problems: list[str]) -> InputError:
    """One `InputError` for the problems `validate_manifest` found: one problem as it is, several listed below a
    count (one `error:` line either way)."""
    path = Path(path).resolve()
    if len(problems) == 1:
        prefix = f"{path}: "
        one = problems[0]
        return InputError(path, one[len(prefix):] if one.startswith(prefix) else one)
    return InputError(path, f"{len(problems)} problem(s) in the manifest:\n  " + "\n  ".join(problems))


def load_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Load and validate a manifest; raise one `InputError` listing every problem."""
    manifest, problems = validate_manifest(path, check_files=check_files)
    if problems:
        raise problems_error(path, problems)
    assert manifest is not None
    return manifest
