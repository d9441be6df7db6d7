"""DICOM CT series: read a folder into a `CTVolume`, and write a `CTVolume` as a CT Image Storage series.

Reading uses pydicom directly, not MONAI's readers: those do not select among several series in one folder,
check that slices are evenly spaced, or keep SliceThickness apart from the measured slice increment.
"""

from __future__ import annotations

import hashlib
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
from coronary_calcium.io.volume import CTVolume

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
# A series is axial when its slice normal is within about 37 degrees of the patient's z axis.
AXIAL_MIN_ABS_NORMAL_Z = 0.8
# Stored pixel values written by write_dicom_series.
INT16_RANGE = (-32768, 32767)
UINT16_RANGE = (0, 65535)

SERIES_RULE = "the axial CT series with the most slices (ties: lowest SeriesInstanceUID)"
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file, or None for anything that is not one (DICOMDIR, text, images of other kinds)."""
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
    if "Rows" not in ds or "SeriesInstanceUID" not in ds:
        return None  # DICOMDIR, structured reports, presentation states: no image here
    return ds


def _normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:3], iop[3:])


def _series_summary(uid: str, headers: list[tuple[Path, Dataset]]) -> dict[str, Any]:
    ds = headers[0][1]
    summary: dict[str, Any] = {
        "series_uid": uid,
        "n_files": len(headers),
        "modality": str(ds.get("Modality", "")) or None,
        "series_description": str(ds.get("SeriesDescription", "")),
        "series_number": int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
    }
    iop = ds.get("ImageOrientationPatient")
    summary["axial"] = bool(
        iop is not None and len(iop) == 6 and abs(_normal(np.asarray(iop, float))[2]) >= AXIAL_MIN_ABS_NORMAL_Z
    )
    summary["localizer"] = "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]
    return summary


def _select_series(
    folder: Path, groups: dict[str, list[tuple[Path, Dataset]]], series_uid: str | None
) -> tuple[str, str]:
    """Pick one series; return its uid and the sentence saying why."""
    summaries = {uid: _series_summary(uid, h) for uid, h in groups.items()}
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(folder, f"series {series_uid} not found; series present: {sorted(groups)}")
        return series_uid, f"requested SeriesInstanceUID {series_uid}"
    if len(groups) == 1:
        uid = next(iter(groups))
        return uid, "the only series in the folder"
    ct = [s for s in summaries.values() if s["modality"] in (None, "CT") and not s["localizer"]]
    if not ct:
        found = sorted({str(s["modality"]) for s in summaries.values()})
        raise InputError(folder, f"no CT series among {len(groups)} series (modalities {found})")
    axial = [s for s in ct if s["axial"]] or ct
    best = sorted(axial, key=lambda s: (-s["n_files"], s["series_uid"]))[0]
    rule = SERIES_RULE if best["axial"] else SERIES_RULE + "; no axial series, so the CT series with the most slices"
    return best["series_uid"], f"{rule}: {best['series_uid']} ({best['n_files']} slices) of {len(groups)} series"


def _require_geometry(path: Path, ds: Dataset) -> None:
    missing = [t for t in _GEOMETRY_TAGS if t not in ds or ds[t].value in (None, "")]
    if missing:
        raise InputError(path, f"missing {', '.join(missing)}: scoring needs the slice geometry")


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> CTVolume:
    """Read one CT series from a folder of DICOM files (non-recursive) into a `CTVolume` in HU.

    When the folder holds several series and ``series_uid`` is None, the axial CT series with the most slices
    is chosen; ``meta["series_selection"]`` states the rule and ``meta["other_series"]`` lists the rest.
    Slices are ordered by position along the slice normal, never by InstanceNumber or file name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM folder not found")
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ds = _read_header(path)
        if ds is not None:
            groups[str(ds.SeriesInstanceUID)].append((path, ds))
    if not groups:
        raise InputError(folder, "no DICOM image files in the folder")

    uid, selection = _select_series(folder, groups, series_uid)
    headers = groups[uid]
    others = [_series_summary(u, h) for u, h in sorted(groups.items()) if u != uid]
    first = headers[0][1]
    modality = str(first.get("Modality", "")) or None
    if modality is not None and modality != "CT":
        raise InputError(folder, f"series {uid} has modality {modality}, not CT")
    if len(headers) < 2:
        raise InputError(folder, f"series {uid} has a single slice ({headers[0][0].name}), not a volume")
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(folder, f"series {uid} is multi-frame (enhanced CT), which is not supported")

    for path, ds in headers:
        _require_geometry(path, ds)
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    pix = np.asarray(first.PixelSpacing, dtype=float)
    shape2d = (int(first.Rows), int(first.Columns))
    for path, ds in headers[1:]:
        other_iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if other_iop.shape != iop.shape or np.abs(other_iop - iop).max() > ORIENTATION_TOL:
            raise InputError(folder, f"inconsistent ImageOrientationPatient: {list(iop)} in {headers[0][0].name}, "
                             f"{list(other_iop)} in {path.name}")
        other_pix = np.asarray(ds.PixelSpacing, dtype=float)
        if other_pix.shape != pix.shape or np.abs(other_pix - pix).max() > PIXEL_SPACING_REL_TOL * pix.max():
            raise InputError(folder, f"inconsistent PixelSpacing: {list(pix)} in {headers[0][0].name}, "
                             f"{list(other_pix)} in {path.name}")
        if (int(ds.Rows), int(ds.Columns)) != shape2d:
            raise InputError(folder, f"inconsistent matrix size: {shape2d} in {headers[0][0].name}, "
                             f"{(int(ds.Rows), int(ds.Columns))} in {path.name}")
    if iop.shape != (6,) or pix.shape != (2,):
        raise InputError(folder, f"malformed ImageOrientationPatient {list(iop)} or PixelSpacing {list(pix)}")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = _normal(iop)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(folder, f"ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors")
    normal /= np.linalg.norm(normal)

    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in headers])
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

    slices = []
    for path, _ in headers:
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
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))

    thickness = first.get("SliceThickness")
    kvp = first.get("KVP")
    kernel = first.get("ConvolutionKernel", "")
    meta: dict[str, Any] = {
        "patient_id": str(first.get("PatientID", "")),
        "series_uid": uid,
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "kvp": float(kvp) if kvp not in (None, "") else None,
        "modality": modality,
        "manufacturer": str(first.get("Manufacturer", "")),
        "convolution_kernel": "\\".join(str(v) for v in kernel) if isinstance(kernel, MultiValue) else str(kernel),
        "series_description": str(first.get("SeriesDescription", "")),
        "source": str(folder),
        "n_files": len(headers),
        "files": [p.name for p, _ in headers],
        "series_selection": selection,
        "other_series": others,
    }
    return CTVolume(
        hu=np.stack(slices),
        spacing=(increment, float(pix[0]), float(pix[1])),
        origin=tuple(float(v) for v in positions[0]),
        direction=np.column_stack([row_dir, col_dir, normal]),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        meta=meta,
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
    stored = stored.astype(dtype)

    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(stored).tobytes())
    digest.update(repr((hu.shape, tuple(map(float, volume.spacing)), tuple(map(float, volume.origin)),
                        np.asarray(volume.direction, float).round(12).tolist(), rescale_intercept)).encode())
    study_uid = study_uid or generate_uid(entropy_srcs=["study", patient_id])
    series_uid = series_uid or generate_uid(entropy_srcs=["series", patient_id, study_uid, series_description,
                                                          str(series_number), digest.hexdigest()])
    frame_uid = generate_uid(entropy_srcs=["frame", series_uid])
    direction = np.asarray(volume.direction, dtype=float)
    affine = volume.affine_lps()
    thickness = slice_thickness if slice_thickness is not None else (
        volume.slice_thickness if volume.slice_thickness is not None else volume.spacing[0])

    folder.mkdir(parents=True, exist_ok=True)
    n = hu.shape[0]
    paths = []
    for k in range(n):
        instance = k + 1 if instance_order == "ascending" else n - k
        position = affine[:3, :3] @ np.array([0.0, 0.0, k]) + affine[:3, 3]
        sop_uid = generate_uid(entropy_srcs=["instance", series_uid, str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "CORONARY_CALC"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.Manufacturer = "coronary_calcium"
        ds.SeriesDescription = series_description
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.KVP = format_number_as_ds(float(kvp))
        ds.SliceThickness = format_number_as_ds(float(thickness))
        ds.SpacingBetweenSlices = format_number_as_ds(float(volume.spacing[0]))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = _ds(np.concatenate([direction[:, 0], direction[:, 1]]))
        ds.SliceLocation = format_number_as_ds(float(position @ direction[:, 2]))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.PixelSpacing = _ds(volume.spacing[1:])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = representation
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = format_number_as_ds(float(rescale_intercept))
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()
        path = folder / f"IM-{series_number:04d}-{instance:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
