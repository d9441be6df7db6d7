"""DICOM CT series: read a folder into a `CTVolume`, and write a `CTVolume` as a CT Image Storage series.

Reading uses pydicom directly, not MONAI's readers: those do not select among several series in one folder,
check that slices are evenly spaced, or keep SliceThickness apart from the measured slice increment.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from coronary_calcium.errors import InputError
from coronary_calcium.io.volume import PIXEL_SPACING_RANGE_MM, SLICE_INCREMENT_RANGE_MM, CTVolume

# Slice increments may differ by this much (the larger of the two) before a series counts as unevenly spaced.
SPACING_ABS_TOL_MM = 0.01
SPACING_REL_TOL = 0.01
# Two slices closer than this along the normal are at the same position.
DUPLICATE_POSITION_TOL_MM = 1e-3
# ImageOrientationPatient cosines and PixelSpacing (relative) may differ this much within one series.
ORIENTATION_TOL = 1e-4
PIXEL_SPACING_REL_TOL = 1e-4
# Slice centres may drift this far (in pixels) off the line along the slice normal (gantry tilt is refused).
IN_PLANE_DRIFT_TOL_PX = 0.1
# Agatston scoring is defined on axial slices: a series counts as axial (and is read) only when its slice normal
# is within this angle of the patient's z axis; sagittal, coronal and strongly oblique series are refused.
AXIAL_MAX_ANGLE_DEG = 15.0
AXIAL_MIN_ABS_NORMAL_Z = math.cos(math.radians(AXIAL_MAX_ANGLE_DEG))
# Stored pixel values written by write_dicom_series.
INT16_RANGE = (-32768, 32767)
UINT16_RANGE = (0, 65535)

SERIES_RULE = ("the axial CT series with the most slices (ties: lowest SeriesInstanceUID, or lowest series key for "
               "series without one)")
# De-identified releases may strip SeriesInstanceUID; the tags below are constant within a series and tell apart
# the series one folder holds (scout, thin and thick reconstructions). AcquisitionNumber is left out: step-and-shoot
# scans number each table position as an acquisition of its own.
_UIDLESS_KEY_TAGS = ("SeriesNumber", "FrameOfReferenceUID", "Modality", "SliceThickness", "ConvolutionKernel")
SERIES_GROUPING = ("files are grouped by SeriesInstanceUID; files without one by SeriesNumber, FrameOfReferenceUID, "
                   "Modality, SliceThickness, ConvolutionKernel (those present), Rows x Columns, PixelSpacing and "
                   "ImageOrientationPatient (both rounded to 0.001); AcquisitionNumber is not used")
_NO_UID = "no SeriesInstanceUID"
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
_RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM image file, or None for anything that is not one (DICOMDIR, text, reports)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # Files without the 128-byte preamble still occur; accept them only if they look like an image.
        try:
            with warnings.catch_warnings():  # parsing a text file as DICOM warns about its "VR"
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None
        if "SOPClassUID" not in ds or "Rows" not in ds:
            return None
    except Exception:
        return None
    if "Rows" not in ds:
        return None  # DICOMDIR, structured reports, presentation states: no image here
    return ds


def _image_files(folder: Path) -> list[Path]:
    """The files directly in ``folder``, each once.

    Links to folders (``selfloop -> .``) are not followed, and a second name for a file already listed (a symbolic
    or hard link) is skipped, so that no slice counts twice; the real name is kept over a link's.
    """
    chosen: dict[tuple[int, int], Path] = {}
    for path in sorted(folder.iterdir()):
        try:
            if path.is_dir() or not path.is_file():
                continue
            stat = path.stat()
        except OSError:  # a dangling or looping link
            continue
        ident = (stat.st_dev, stat.st_ino)
        if ident not in chosen or (chosen[ident].is_symlink() and not path.is_symlink()):
            chosen[ident] = path
    return sorted(chosen.values())


def _text(value: Any) -> str:
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _rounded(value: Any) -> str:
    """Numbers rounded to 0.001 (``+ 0.0`` turns -0.0 into 0.0), joined by backslashes; text as it is."""
    try:
        numbers = [round(float(v), 3) + 0.0 for v in (value if isinstance(value, MultiValue) else [value])]
    except (TypeError, ValueError):
        return _text(value)
    return "\\".join(f"{v:g}" for v in numbers)


def _series_key(ds: Dataset) -> str:
    """The file's series: its SeriesInstanceUID, or without one a key from the tags of `SERIES_GROUPING`."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    parts = [f"{tag} {_text(ds.get(tag))}" for tag in _UIDLESS_KEY_TAGS if ds.get(tag) not in (None, "")]
    parts.append(f"{ds.get('Rows')}x{ds.get('Columns')}")
    for tag in ("PixelSpacing", "ImageOrientationPatient"):
        if ds.get(tag) not in (None, ""):
            parts.append(f"{tag} {_rounded(ds.get(tag))}")
    return f"{_NO_UID}: " + ", ".join(parts)


def _group_files(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in _image_files(folder):
        ds = _read_header(path)
        if ds is None:
            continue
        try:
            key = _series_key(ds)
        except Exception as exc:  # pydicom converts values on access: a malformed one raises here
            raise InputError(path, f"unreadable DICOM header: {exc}") from None
        groups[key].append((path, ds))
    return groups


def _normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:3], iop[3:])


def _is_axial(iop: Any) -> bool:
    try:
        iop = np.asarray(iop, dtype=float)
    except (TypeError, ValueError):
        return False
    if iop.shape != (6,) or not np.isfinite(iop).all():
        return False
    normal = _normal(iop)
    length = float(np.linalg.norm(normal))
    return length > 0 and abs(normal[2]) / length >= AXIAL_MIN_ABS_NORMAL_Z


def _series_summary(key: str, headers: list[tuple[Path, Dataset]]) -> dict[str, Any]:
    ds = headers[0][1]
    summary: dict[str, Any] = {
        "series_uid": None if key.startswith(_NO_UID) else key,
        "n_files": len(headers),
        "modality": str(ds.get("Modality", "")) or None,
        "series_description": str(ds.get("SeriesDescription", "")),
        "series_number": int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
    }
    if key.startswith(_NO_UID):
        summary["series_key"] = key
    summary["axial"] = _is_axial(ds.get("ImageOrientationPatient"))
    summary["localizer"] = "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]
    return summary


def _select_series(
    folder: Path, groups: dict[str, list[tuple[Path, Dataset]]], series_uid: str | None
) -> tuple[str, str]:
    """Pick one series; return its key (the SeriesInstanceUID where there is one) and the sentence saying why."""
    grouping = f" ({SERIES_GROUPING})" if any(k.startswith(_NO_UID) for k in groups) else ""
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(folder, f"series {series_uid} not found; series present: {sorted(groups)}")
        return series_uid, f"requested SeriesInstanceUID {series_uid}"
    if len(groups) == 1:
        key = next(iter(groups))
        return key, f"the only series in the folder{grouping}"
    summaries = {key: _series_summary(key, h) for key, h in groups.items()}
    ct = [k for k, s in summaries.items() if s["modality"] in (None, "CT") and not s["localizer"]]
    if not ct:
        found = sorted({str(s["modality"]) for s in summaries.values()})
        raise InputError(folder, f"no CT series among {len(groups)} series (modalities {found})")
    axial = [k for k in ct if summaries[k]["axial"]] or ct
    best = sorted(axial, key=lambda k: (-summaries[k]["n_files"], k))[0]
    axial_best = summaries[best]["axial"]
    rule = SERIES_RULE if axial_best else SERIES_RULE + "; no axial series, so the CT series with the most slices"
    return best, f"{rule}: {best} ({len(groups[best])} slices) of {len(groups)} series{grouping}"


def _require_geometry(path: Path, ds: Dataset) -> None:
    missing = [t for t in _GEOMETRY_TAGS if t not in ds or ds[t].value in (None, "")]
    if missing:
        raise InputError(path, f"missing {', '.join(missing)}: scoring needs the slice geometry")


def _floats(path: Path, ds: Dataset, tag: str, n: int, finite: bool = True) -> np.ndarray:
    """``n`` (finite) numbers from a tag, or an `InputError` naming the file."""
    try:
        values = np.asarray(ds[tag].value, dtype=float).reshape(-1)
    except Exception:  # pydicom converts the raw value on access: a malformed DS / IS raises here
        raise InputError(path, f"malformed {tag}: expected {n} number(s)") from None
    if values.shape != (n,) or (finite and not np.isfinite(values).all()):
        raise InputError(path, f"malformed {tag} {values.tolist()}: expected {n} finite number(s)")
    return values


def _pixel_spacing(path: Path, ds: Dataset) -> np.ndarray:
    """The file's (row, column) PixelSpacing in mm, refused when not positive or outside the physical range."""
    pix = _floats(path, ds, "PixelSpacing", 2)
    if (pix <= 0).any():
        raise InputError(path, f"non-positive pixel spacing {pix.tolist()} mm (PixelSpacing)")
    lo, hi = PIXEL_SPACING_RANGE_MM
    if (pix < lo).any() or (pix > hi).any():
        raise InputError(path, f"implausible pixel spacing {pix.tolist()} mm (PixelSpacing): CT pixels are "
                         f"{lo:g} .. {hi:g} mm")
    return pix


def _plane(folder: Path, headers: list[tuple[Path, Dataset]]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The ImageOrientationPatient, PixelSpacing and matrix size every slice shares (refused when they differ)."""
    for path, ds in headers:
        _require_geometry(path, ds)
    first_path, first = headers[0]
    iop = _floats(first_path, first, "ImageOrientationPatient", 6)
    pix = _pixel_spacing(first_path, first)
    shape2d = (int(first.Rows), int(first.Columns))
    for path, ds in headers[1:]:
        other_iop = _floats(path, ds, "ImageOrientationPatient", 6)
        if np.abs(other_iop - iop).max() > ORIENTATION_TOL:
            raise InputError(folder, f"inconsistent ImageOrientationPatient: {list(iop)} in {first_path.name}, "
                             f"{list(other_iop)} in {path.name}")
        other_pix = _pixel_spacing(path, ds)
        if np.abs(other_pix - pix).max() > PIXEL_SPACING_REL_TOL * pix.max():
            raise InputError(folder, f"inconsistent PixelSpacing: {list(pix)} in {first_path.name}, "
                             f"{list(other_pix)} in {path.name}")
        if (int(ds.Rows), int(ds.Columns)) != shape2d:
            raise InputError(folder, f"inconsistent matrix size: {shape2d} in {first_path.name}, "
                             f"{(int(ds.Rows), int(ds.Columns))} in {path.name}")
    return iop, pix, shape2d


def _slice_axes(folder: Path, name: str, iop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and slice-normal unit vectors; refused unless orthonormal and axial (`AXIAL_MAX_ANGLE_DEG`)."""
    row_dir, col_dir = iop[:3], iop[3:]
    normal = _normal(iop)
    unit = all(abs(np.linalg.norm(v) - 1.0) <= 1e-3 for v in (row_dir, col_dir, normal))
    if not unit or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(folder, f"ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors")
    normal = normal / np.linalg.norm(normal)
    if abs(normal[2]) < AXIAL_MIN_ABS_NORMAL_Z:
        angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
        raise InputError(folder, f"{name} is not axial: its slice normal {np.round(normal, 3).tolist()} is "
                         f"{angle:.0f} degrees from the patient's z (head-feet) axis; only series whose slices are "
                         f"within {AXIAL_MAX_ANGLE_DEG:g} degrees of axial are scored (sagittal and coronal "
                         "reconstructions are refused)")
    return row_dir, col_dir, normal


def _stack(
    folder: Path, headers: list[tuple[Path, Dataset]], normal: np.ndarray, pix: np.ndarray
) -> tuple[list[tuple[Path, Dataset]], np.ndarray, float]:
    """Order the slices along the normal; refuse duplicates, uneven spacing, tilt and implausible increments."""
    positions = np.array([_floats(path, ds, "ImagePositionPatient", 3) for path, ds in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]
    steps = np.diff(along)
    dup = np.flatnonzero(steps < DUPLICATE_POSITION_TOL_MM)
    if dup.size:
        a, b = headers[dup[0]][0].name, headers[dup[0] + 1][0].name
        raise InputError(folder, f"duplicate slice positions: {a} and {b} both at {along[dup[0]]:.3f} mm along the "
                         f"normal ({dup.size} duplicate(s))")
    lo, hi = float(steps.min()), float(steps.max())
    if hi - lo > max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * float(np.median(steps))):
        raise InputError(folder, f"uneven slice spacing: increments from {lo:.4f} to {hi:.4f} mm")
    drift = positions - positions[0] - np.outer(along - along[0], normal)
    max_drift = float(np.linalg.norm(drift, axis=1).max())
    if max_drift > IN_PLANE_DRIFT_TOL_PX * float(pix.min()):
        raise InputError(folder, f"slices are not stacked along the slice normal (gantry tilt?): in-plane drift "
                         f"up to {max_drift:.3f} mm")
    increment = float((along[-1] - along[0]) / (len(along) - 1))
    low, high = SLICE_INCREMENT_RANGE_MM
    if not low <= increment <= high:
        raise InputError(folder, f"implausible slice increment {increment:g} mm (from ImagePositionPatient): CT "
                         f"slices are {low:g} .. {high:g} mm apart")
    return headers, positions, increment


def _rescale(folder: Path, headers: list[tuple[Path, Dataset]]) -> list[tuple[float, float]]:
    """Each slice's (RescaleSlope, RescaleIntercept), required on every slice.

    HU = stored value x slope + intercept, and a missing intercept is not 0 (it is -1024 on many scanners).
    """
    n = len(headers)
    for tag in _RESCALE_TAGS:
        missing = [path for path, ds in headers if tag not in ds or ds[tag].value in (None, "")]
        if len(missing) == n:
            raise InputError(folder, f"{tag} missing on every slice: HU = stored value x RescaleSlope + "
                             "RescaleIntercept, so both are required on every slice")
        if missing:
            raise InputError(missing[0], f"{tag} missing, but present on {n - len(missing)} other slice(s) of the "
                             f"series ({len(missing)} of {n} slices lack it): RescaleSlope and RescaleIntercept are "
                             "required on every slice")
    values = []
    for path, ds in headers:
        slope, intercept = (_floats(path, ds, tag, 1, finite=False)[0] for tag in _RESCALE_TAGS)
        if not (math.isfinite(slope) and slope > 0):
            raise InputError(path, f"RescaleSlope {slope:g} is not usable: it must be a finite positive number")
        if not math.isfinite(intercept):
            raise InputError(path, f"RescaleIntercept {intercept:g} is not a finite number")
        values.append((slope, intercept))
    return values


def _read_pixels(headers: list[tuple[Path, Dataset]], shape2d: tuple[int, int],
                 rescale: list[tuple[float, float]]) -> np.ndarray:
    """The slices' pixel data in HU, stacked in ``headers`` order."""
    slices = []
    for (path, _), (slope, intercept) in zip(headers, rescale):
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise InputError(path, f"cannot read DICOM file: {exc}") from exc
        try:
            stored = ds.pixel_array
        except Exception as exc:  # a decoder plugin missing, or corrupt data
            raise InputError(path, f"cannot decode pixel data (transfer syntax {ds.file_meta.get('TransferSyntaxUID')})"
                             f": {exc}") from exc
        if stored.shape != shape2d:
            raise InputError(path, f"pixel data shape {stored.shape}, expected {shape2d}")
        slices.append(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    return np.stack(slices)


def _meta(folder: Path, headers: list[tuple[Path, Dataset]], selection: str,
          others: list[dict[str, Any]]) -> dict[str, Any]:
    first = headers[0][1]
    kvp = first.get("KVP")
    return {
        "patient_id": str(first.get("PatientID", "")),
        "series_uid": str(first.SeriesInstanceUID) if first.get("SeriesInstanceUID") else None,
        "study_uid": str(first.StudyInstanceUID) if first.get("StudyInstanceUID") else None,
        "kvp": float(kvp) if kvp not in (None, "") else None,
        "modality": str(first.get("Modality", "")) or None,
        "manufacturer": str(first.get("Manufacturer", "")),
        "convolution_kernel": _text(first.get("ConvolutionKernel", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "source": str(folder),
        "n_files": len(headers),
        "files": [p.name for p, _ in headers],
        "series_selection": selection,
        "other_series": others,
    }


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> CTVolume:
    """Read one axial CT series from a folder of DICOM files (non-recursive) into a `CTVolume` in HU.

    Files are grouped into series by `SERIES_GROUPING` (de-identified releases may lack SeriesInstanceUID). When
    the folder holds several series and ``series_uid`` is None, `SERIES_RULE` picks one; ``meta["series_selection"]``
    states the rule and ``meta["other_series"]`` lists the rest. Slices are ordered by position along the slice
    normal, never by InstanceNumber or file name. Non-axial series, missing or unusable rescale values and
    implausible spacings are refused with an `InputError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM folder not found")
    groups = _group_files(folder)
    if not groups:
        raise InputError(folder, "no DICOM image files in the folder")

    key, selection = _select_series(folder, groups, series_uid)
    headers = groups[key]
    name = f"series {key}" if not key.startswith(_NO_UID) else f"series ({key})"
    others = [_series_summary(k, h) for k, h in sorted(groups.items()) if k != key]
    first = headers[0][1]
    modality = str(first.get("Modality", "")) or None
    if modality is not None and modality != "CT":
        raise InputError(folder, f"{name} has modality {modality}, not CT")
    if len(headers) < 2:
        raise InputError(folder, f"{name} has a single slice ({headers[0][0].name}), not a volume")
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(folder, f"{name} is multi-frame (enhanced CT), which is not supported")

    iop, pix, shape2d = _plane(folder, headers)
    row_dir, col_dir, normal = _slice_axes(folder, name, iop)
    headers, positions, increment = _stack(folder, headers, normal, pix)
    hu = _read_pixels(headers, shape2d, _rescale(folder, headers))
    thickness = first.get("SliceThickness")
    return CTVolume(
        hu=hu,
        spacing=(increment, float(pix[0]), float(pix[1])),
        origin=tuple(float(v) for v in positions[0]),
        direction=np.column_stack([row_dir, col_dir, normal]),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        meta=_meta(folder, headers, selection, others),
    )


def _ds(values) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def write_dicom_series(
    volume: CTVolume,
    folder: str | Path,
    *,
    patient_id: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "",
    kvp: float = 120.0,
    rescale_intercept: float = -1024.0,
    slice_thickness: float | None = None,
    instance_order: str = "ascending",
    series_number: int = 1,
) -> list[Path]:
    """Write ``volume`` as CT Image Storage files ``IM-<series>-<instance>.dcm``; return them in ascending z.

    Output is deterministic: UIDs not given are derived from ``patient_id`` (and the volume's content) and no
    timestamps are written, so identical input gives byte-identical files. ``instance_order="descending"``
    numbers instances against z, as COCA's gated scans do.
    """
    folder = Path(folder)
    if instance_order not in ("ascending", "descending"):
        raise InputError("instance_order", f"must be 'ascending' or 'descending', not {instance_order!r}")
    hu = np.asarray(volume.hu)
    if hu.ndim != 3:
        raise InputError("volume", f"expected a (Z, Y, X) array, got shape {hu.shape}")
    stored, representation = _stored_values(hu, rescale_intercept)
    study_uid = study_uid or generate_uid(entropy_srcs=["study", patient_id])
    if not series_uid:
        digest = _content_digest(volume, stored, rescale_intercept)
        series_uid = generate_uid(entropy_srcs=["series", patient_id, study_uid, series_description,
                                                str(series_number), digest])
    thickness = slice_thickness if slice_thickness is not None else (
        volume.slice_thickness if volume.slice_thickness is not None else volume.spacing[0])
    series = _series_tags(volume, stored.shape, patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                          series_description=series_description, kvp=kvp, thickness=thickness,
                          series_number=series_number, representation=representation,
                          rescale_intercept=rescale_intercept)
    direction = np.asarray(volume.direction, dtype=float)
    affine = volume.affine_lps()

    folder.mkdir(parents=True, exist_ok=True)
    n = hu.shape[0]
    paths = []
    for k in range(n):
        instance = k + 1 if instance_order == "ascending" else n - k
        position = affine[:3, :3] @ np.array([0.0, 0.0, k]) + affine[:3, 3]
        ds = _slice_dataset(series, generate_uid(entropy_srcs=["instance", series_uid, str(k)]), instance, position,
                            direction, stored[k])
        path = folder / f"IM-{series_number:04d}-{instance:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _stored_values(hu: np.ndarray, rescale_intercept: float) -> tuple[np.ndarray, int]:
    """HU as 16-bit stored values (unsigned when they fit) and their PixelRepresentation; InputError if they don't."""
    stored = np.rint(hu.astype(np.float64) - rescale_intercept)
    if not np.isfinite(stored).all():
        raise InputError("volume", "HU values are not all finite")
    lo, hi = float(stored.min()), float(stored.max())
    if lo >= UINT16_RANGE[0] and hi <= UINT16_RANGE[1]:
        dtype, representation = np.uint16, 0
    elif lo >= INT16_RANGE[0] and hi <= INT16_RANGE[1]:
        dtype, representation = np.int16, 1
    else:
        raise InputError("volume", f"HU range {lo + rescale_intercept:.0f}..{hi + rescale_intercept:.0f} does not fit "
                         f"16-bit stored values with RescaleIntercept {rescale_intercept}")
    return stored.astype(dtype), representation


def _content_digest(volume: CTVolume, stored: np.ndarray, rescale_intercept: float) -> str:
    """SHA-256 of the stored values and the geometry: a series UID that changes with the content."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(stored).tobytes())
    digest.update(repr((stored.shape, tuple(map(float, volume.spacing)), tuple(map(float, volume.origin)),
                        np.asarray(volume.direction, float).round(12).tolist(), rescale_intercept)).encode())
    return digest.hexdigest()


def _series_tags(volume: CTVolume, shape: tuple[int, ...], *, patient_id: str, study_uid: str, series_uid: str,
                 series_description: str, kvp: float, thickness: float, series_number: int, representation: int,
                 rescale_intercept: float) -> dict[str, Any]:
    """The tags every file of the series shares, by keyword."""
    direction = np.asarray(volume.direction, dtype=float)
    return {
        "SpecificCharacterSet": "ISO_IR 192",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage,
        "Modality": "CT",
        "Manufacturer": "coronary_calcium",
        "SeriesDescription": series_description,
        "PatientName": patient_id,
        "PatientID": patient_id,
        "KVP": format_number_as_ds(float(kvp)),
        "SliceThickness": format_number_as_ds(float(thickness)),
        "SpacingBetweenSlices": format_number_as_ds(float(volume.spacing[0])),
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "FrameOfReferenceUID": generate_uid(entropy_srcs=["frame", series_uid]),
        "StudyID": "1",
        "SeriesNumber": series_number,
        "ImageOrientationPatient": _ds(np.concatenate([direction[:, 0], direction[:, 1]])),
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": int(shape[1]),
        "Columns": int(shape[2]),
        "PixelSpacing": _ds(volume.spacing[1:]),
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": representation,
        "WindowCenter": "40",
        "WindowWidth": "400",
        "RescaleIntercept": format_number_as_ds(float(rescale_intercept)),
        "RescaleSlope": "1",
        "RescaleType": "HU",
    }


def _slice_dataset(series: dict[str, Any], sop_uid: str, instance: int, position: np.ndarray,
                   direction: np.ndarray, pixels: np.ndarray) -> Dataset:
    """One slice's file: the series tags plus its own UID, instance number, position and pixels (little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CORONARY_CALC"
    ds = Dataset()
    ds.file_meta = meta
    for keyword, value in series.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = _ds(position)
    ds.SliceLocation = format_number_as_ds(float(position @ direction[:, 2]))
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds
