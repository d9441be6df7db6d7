"""Inference over a manifest, one scan, or a folder of scans, with per-scan outputs and a run summary.

Input PATH:
- a manifest (``*.json``): its scans (optionally one split); scans with references get an ``agreement.json``;
- one scan: a DICOM series folder, or a NIfTI (.nii, .nii.gz) / MetaImage (.mhd, .mha) file;
- a folder of scans: every folder below it that directly holds DICOM files is one series, and every NIfTI /
  MetaImage file below it is one scan (scan id: the path relative to PATH, without suffix, '/' -> '_').

Outcome: a scan that cannot be read or is not CT is reported (``summary.csv`` status "error" with the reason,
printed to stderr) and the others are processed. The run succeeds when at least one scan was scored; when every
scan failed, `run_inference` raises `InputError` (the command line exits 2) after writing the summary, with the
first reason in its message (the per-scan lines are printed only when some scan was scored).
Existing results are never overwritten unless ``overwrite=True``: this is checked for every scan before any work.
Outputs are all-or-nothing: the run writes into a temporary folder beside the output folder and moves its results
into place at the end; an interrupt or a failure (a full disk) leaves the output folder as it was.
``dicom_out``: each scored DICOM series also gets a DICOM SEG and SR (`coronary_calcium.inference.dicom_outputs`);
an input without any DICOM series is refused before any work, and in a mixed input each NIfTI / MetaImage scan gets
a note in its result.json instead.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from coronary_calcium.errors import InputError
from coronary_calcium.inference.agreement_report import evaluate_agreement, sanitize_scan_id, scan_reference
from coronary_calcium.inference.model import InferenceModel, load_model
from coronary_calcium.inference.outputs import (
    AGREEMENT_FILE,
    REPORT_FILE,
    RESULT_FILE,
    SUMMARY_FILE,
    summary_row,
    write_agreement,
    write_error_result,
    write_report,
    write_scan_outputs,
    write_summary,
)
from coronary_calcium.inference.scan import ScanResult, infer_scan
from coronary_calcium.inference.thresholds import CHECKPOINT_FILE
from coronary_calcium.io.images import read_image
from coronary_calcium.io.manifest import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES, Manifest, ScanEntry, load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.report.files import atomic_folder, check_output_folder

__all__ = ["RunResult", "ScanInput", "discover_inputs", "run_inference"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = NIFTI_SUFFIXES + METAIMAGE_SUFFIXES
# Files that sit beside scans and are not DICOM (MetaImage pixel files, references, notes).
_NOT_DICOM_SUFFIXES = (".raw", ".zraw", ".json", ".xml", ".csv", ".txt", ".md", ".xlsx", ".html", ".png", ".jpg",
                       ".pdf", ".py", ".yml", ".yaml", ".zip", ".gz", ".xz", ".tar")


@dataclass
class ScanInput:
    """One scan to process: its id (folder name under the output), path, and manifest entry (if any)."""

    scan_id: str
    path: Path
    entry: ScanEntry | None = None


@dataclass
class RunResult:
    """What a run produced: summary rows (one per scan), counts, files and (manifest input) the agreement."""

    output_dir: Path
    rows: list[dict[str, Any]]
    summary_csv: Path
    report_html: Path | None
    agreement_json: Path | None = None
    agreement: dict[str, Any] | None = None
    results: list[ScanResult] = field(default_factory=list, repr=False)

    @property
    def n_ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def n_error(self) -> int:
        return len(self.rows) - self.n_ok

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(r["scan_id"], r["reason"]) for r in self.rows if r["status"] != "ok"]


def _is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _may_be_dicom(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name.endswith(IMAGE_SUFFIXES) or name.endswith(_NOT_DICOM_SUFFIXES):
        return False
    if name.endswith((".dcm", ".ima")) or "." not in name:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _unique(ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for sid in ids:
        n = seen.get(sid, 0)
        seen[sid] = n + 1
        out.append(sid if n == 0 else f"{sid}-{n + 1}")
    return out


def discover_inputs(input_path: str | Path, *, split: str | None = None) -> tuple[list[ScanInput], Manifest | None]:
    """The scans of ``input_path`` (see the module docstring) and the manifest when it is one."""
    if input_path is None or str(input_path) == "":
        raise InputError("input", "give the input: a manifest, a DICOM folder, a NIfTI/MetaImage file or a folder")
    path = Path(str(input_path))  # the bundle CLI may hand over a number for an all-digit name
    if not path.exists():
        raise InputError(path, "input not found (give a manifest, a DICOM folder, a NIfTI/MetaImage file, or a "
                         "folder of scans)")
    if path.is_file() and path.suffix.lower() == ".json":
        manifest = load_manifest(path)
        entries = manifest.split(split) if split else list(manifest.scans)
        if not entries:
            raise InputError(path, f"no scans{f' in split {split!r}' if split else ''}")
        ids = _unique([sanitize_scan_id(e.scan_id) for e in entries])
        return [ScanInput(sid, e.image, e) for sid, e in zip(ids, entries)], manifest
    if split:
        raise InputError("split", "only a manifest has splits")
    if path.is_file():
        if not _is_image_file(path):
            raise InputError(path, "not a NIfTI (.nii, .nii.gz) or MetaImage (.mhd, .mha) file, a manifest (.json) "
                             "or a folder")
        return [ScanInput(sanitize_scan_id(_stem(path)), path)], None
    found: list[tuple[str, Path]] = []
    # A linked folder (``selfloop -> .``) is not a scan of its own: its files would count a second time.
    folders = [p for p in path.rglob("*") if p.is_dir() and not p.is_symlink()]
    for folder in sorted([path, *folders]):
        if any(part.startswith(".") for part in folder.relative_to(path).parts):
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if any(_may_be_dicom(p) for p in files):
            rel = folder.relative_to(path)
            found.append(("_".join(rel.parts) if rel.parts else path.name, folder))
        for p in files:
            if _is_image_file(p) and not p.name.startswith("."):
                rel = p.relative_to(path)
                found.append(("_".join((*rel.parts[:-1], _stem(p))), p))
    if not found:
        raise InputError(path, "no scans found: expected DICOM files, or NIfTI / MetaImage files, in it or its "
                         "sub-folders")
    ids = _unique([sanitize_scan_id(sid) for sid, _ in found])
    return [ScanInput(sid, p) for sid, (_, p) in zip(ids, found)], None


def _check_existing(output_dir: Path, scans: Sequence[ScanInput], with_agreement: bool) -> None:
    existing = [output_dir / s.scan_id / RESULT_FILE for s in scans if (output_dir / s.scan_id / RESULT_FILE).exists()]
    for name in (SUMMARY_FILE, REPORT_FILE) + ((AGREEMENT_FILE,) if with_agreement else ()):
        if (output_dir / name).exists():
            existing.append(output_dir / name)
    if existing:
        more = f", ... ({len(existing)} in all)" if len(existing) > 5 else ""
        shown = ", ".join(str(p) for p in existing[:5]) + more
        raise InputError(existing[0], f"results already exist ({shown}); pass overwrite=True (--overwrite) to "
                         "replace them, or choose another output folder")


def _check_dicom_inputs(scans: Sequence[ScanInput], input_path: str | Path) -> None:
    """``dicom_out`` needs at least one DICOM series (a folder): SEG and SR reference the source's instances."""
    if not any(s.path.is_dir() for s in scans):
        raise InputError("--dicom-out", f"needs DICOM series input: the {len(scans)} scan(s) of {input_path} are "
                         "NIfTI / MetaImage files, and DICOM SEG and SR must reference the source series' instances "
                         "(drop --dicom-out)")


def _has_reference(entry: ScanEntry | None) -> bool:
    return entry is not None and any(p is not None for p in (entry.labels, entry.coca_xml, entry.truth))


def _read(scan: ScanInput) -> tuple[Any, Any, list[str]]:
    """The scan's volume, its reference labels (or None) and notes on a reference that could not be used."""
    if scan.entry is None:
        return read_image(scan.path), None, []
    try:
        volume, labels = read_scan(scan.entry)
        return volume, labels, []
    except InputError as exc:  # the image or its reference: the image alone decides whether to go on
        volume, _ = read_scan(scan.entry, with_reference=False)
        return volume, None, [f"reference not used: {exc}"]


# Errors about the output folder (full disk, quota, read-only): they stop the run instead of failing one scan.
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _is_output_error(exc: BaseException, output_dir: Path) -> bool:
    if not isinstance(exc, OSError):
        return False
    name = exc.filename if isinstance(exc.filename, str) else None
    return exc.errno in _OUTPUT_ERRNOS or (name is not None and Path(name).is_relative_to(output_dir))


def _process(scan: ScanInput, model: InferenceModel, output_dir: Path, overlays: bool, keep: bool,
             dicom_out: bool = False) -> tuple[dict[str, Any], ScanResult | None, dict[str, Any] | None]:
    started = time.perf_counter()
    scan_dir = output_dir / scan.scan_id
    try:
        volume, labels, notes = _read(scan)
        volume.meta["scan_id"] = scan.scan_id
        result = infer_scan(volume, model, labels=labels, scan_id=scan.scan_id)
        result.notes.extend(notes)
        if keep and _has_reference(scan.entry) and not notes:
            source = "labels" if scan.entry.labels is not None else "coca_xml"  # type: ignore[union-attr]
            result.reference = scan_reference(volume, labels, truth=scan.entry.truth,  # type: ignore[union-attr]
                                              config=model.thresholds.scoring_config(), source=source)
        payload = write_scan_outputs(result, volume, scan_dir, overlays=overlays, started=started,
                                     dicom_out=dicom_out)
        row = summary_row(scan.scan_id, "ok", payload=payload, seconds=result.seconds, source=str(scan.path))
        return row, (result.slim() if keep else None), payload
    except InputError as exc:
        reason = str(exc)
    except Exception as exc:  # one broken scan must not stop the batch; the reason names the failure
        if _is_output_error(exc, output_dir):
            raise
        logger.error("scan %s failed: %s: %s", scan.scan_id, type(exc).__name__, exc)
        logger.debug("scan %s failed", scan.scan_id, exc_info=True)  # the traceback, for --debug
        reason = f"internal error ({type(exc).__name__}): {exc}"
    seconds = time.perf_counter() - started
    write_error_result(scan_dir, scan.scan_id, reason, str(scan.path))
    return summary_row(scan.scan_id, "error", reason=reason, seconds=seconds, source=str(scan.path)), None, None


def run_inference(
    input_path: str | Path,
    output_dir: str | Path,
    *,
    ckpt_dir: str | Path | None = None,
    model: InferenceModel | None = None,
    checkpoint: str | Path = CHECKPOINT_FILE,
    overwrite: bool = False,
    progress: bool = True,
    split: str | None = None,
    device: Any = None,
    precision: str | None = None,
    batch_size: int = 16,
    overlays: bool = True,
    report: bool = True,
    evaluate: bool = True,
    rule: str | None = None,
    dicom_out: bool = False,
    network: nn.Module | None = None,
    preprocessing: Callable[[dict], dict] | None = None,
    built_with: Mapping[str, Any] | None = None,
) -> RunResult:
    """Score every scan of ``input_path`` into ``output_dir`` (see the module docstring); return the `RunResult`.

    The model is ``model`` (from `load_model`) or ``<ckpt_dir>/<checkpoint>`` with its thresholds.json. Writes
    ``<scan_id>/result.json``, ``<scan_id>/lesions.nii.gz``, ``<scan_id>/slices/*.png``, ``summary.csv``,
    ``report.html`` and, for a manifest whose scans have references (and ``evaluate``), ``agreement.json``.
    ``rule`` ("classifier", "slice-cam" or None for the thresholds file's own) applies when the model is loaded here,
    as do ``network``, ``preprocessing`` and ``built_with`` (an inference config's; see `load_model`).
    ``dicom_out``: also ``<scan_id>/calcium_seg.dcm`` and ``<scan_id>/calcium_sr.dcm`` per scored DICOM series.
    Raises `InputError` before any work when results exist and ``overwrite`` is False, and after writing the
    summary when no scan could be scored.
    """
    output_dir = Path(str(output_dir)).absolute()
    check_output_folder(output_dir)
    scans, manifest = discover_inputs(input_path, split=split)
    if dicom_out:
        _check_dicom_inputs(scans, input_path)
    # any reference counts here, scores only included: evaluate_agreement reads those from the manifest
    with_agreement = evaluate and manifest is not None and any(s.entry is not None and s.entry.has_reference
                                                               for s in scans)
    if not overwrite:
        _check_existing(output_dir, scans, with_agreement)
    if model is not None:
        return _run(scans, manifest, model, output_dir, input_path, progress, overlays, report, with_agreement,
                    dicom_out)
    if ckpt_dir is None:
        raise InputError("ckpt_dir", "give the checkpoint folder (holding model.pt and thresholds.json)")
    model = load_model(ckpt_dir, checkpoint=checkpoint, network=network, preprocessing=preprocessing,
                       built_with=built_with, device=device, precision=precision, batch_size=batch_size, rule=rule)
    try:
        return _run(scans, manifest, model, output_dir, input_path, progress, overlays, report, with_agreement,
                    dicom_out)
    finally:
        model.close()


def _run(scans: list[ScanInput], manifest: Manifest | None, model: InferenceModel, output_dir: Path,
         input_path: str | Path, progress: bool, overlays: bool, report: bool, with_agreement: bool,
         dicom_out: bool = False) -> RunResult:
    """Score ``scans`` into a temporary folder, move its results into ``output_dir``; raise when none scored."""
    with atomic_folder(output_dir, last=(SUMMARY_FILE,)) as work:
        rows: list[dict[str, Any]] = []
        results: list[ScanResult] = []
        payloads: dict[str, dict[str, Any]] = {}
        for scan in tqdm(scans, desc="scoring scans", unit="scan", disable=not progress):
            row, result, payload = _process(scan, model, work, overlays, keep=with_agreement, dicom_out=dicom_out)
            rows.append(row)
            if result is not None:
                results.append(result)
            if payload is not None and report:
                payloads[scan.scan_id] = _report_payload(payload)
        write_summary(work / SUMMARY_FILE, rows)
        agreement = None
        if with_agreement and results:
            agreement = evaluate_agreement(results, manifest, config=model.thresholds.scoring_config())  # type: ignore
            write_agreement(work / AGREEMENT_FILE, agreement)
        if report:
            write_report(work / REPORT_FILE, rows, payloads, run_info=_run_info(model, input_path), agreement=agreement)
    run = RunResult(output_dir=output_dir, rows=rows, summary_csv=output_dir / SUMMARY_FILE,
                    report_html=output_dir / REPORT_FILE if report else None,
                    agreement_json=output_dir / AGREEMENT_FILE if agreement is not None else None,
                    agreement=agreement, results=results)
    if run.n_ok == 0:  # the reasons in the one error line: nothing else is printed for them
        first_id, first_reason = run.failures[0]
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        raise InputError(output_dir / SUMMARY_FILE, f"all {len(rows)} scan(s) failed (see the summary): "
                         f"{first_id}: {first_reason}{more}")
    for scan_id, reason in run.failures:
        print(f"error: scan {scan_id}: {reason}", file=sys.stderr)
    return run


def _run_info(model: InferenceModel, input_path: str | Path) -> dict[str, Any]:
    t = model.thresholds
    return {"input": str(input_path), "model": model.network_name, "checkpoint": str(model.checkpoint),
            "decision": t.decision, "t_slice": t.t_slice,
            **({"t_lesion": t.t_lesion} if t.lesion_classifier is not None else {"t_cam": t.t_cam}),
            "CAM": f"{t.cam_method} at {model.analyzer.cam_key} ({t.cam_score}, {t.cam_pooling})"}


def _report_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The parts of result.json the HTML report uses (keeps memory flat over large batches)."""
    keep = ("totals", "category", "categories", "lesions", "files", "slice_probabilities", "positive_slices",
            "n_slices", "source", "notes")
    return {k: payload[k] for k in keep if k in payload}


class InferenceRunner:
    """The inference bundle's `evaluator`: `run()` scores every scan of `input_path` with `run_inference`.

    Keyword arguments go to `run_inference`: inference.json passes its ``network`` and ``preprocessing``, and
    ``built_with`` (the network name, channels, HU windows, image size and field of view it built them with), which
    must match the checkpoint's thresholds.json. MONAI's infer workflow expects an object with `run()`; building
    this one loads nothing, so the Model Zoo's property check can construct it without a trained checkpoint.
    """

    def __init__(self, input_path: str | Path | None, output_dir: str | Path, **kwargs: Any) -> None:
        self.input_path = input_path
        self.output_dir = output_dir
        self.kwargs = kwargs

    def run(self) -> RunResult:
        if self.input_path is None:
            raise InputError("input", "give the scans to score: --input PATH (a manifest, a DICOM folder, a NIfTI "
                             "or MetaImage file, or a folder of scans)")
        return run_inference(self.input_path, self.output_dir, **self.kwargs)
