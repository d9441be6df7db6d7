"""NIfTI / MetaImage volumes (and DICOM folders) to `CTVolume`, label volumes, and NIfTI output.

Files are loaded with MONAI (NibabelReader / ITKReader, affine in RAS) and reoriented with MONAI's
``Orientation`` to LPS axis codes, so that the (x, y, z) array transposed to (z, y, x) follows the `CTVolume`
convention: columns run patient right -> left, rows anterior -> posterior, slices feet -> head.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.io.dicom import read_dicom_series
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import LABEL_SCHEMES

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
# Geometry a label volume may differ from its image by (NIfTI stores the affine as float32).
SPACING_REL_TOL = 1e-3
ORIGIN_TOL_MM = 0.01
DIRECTION_TOL = 1e-4
# RAS <-> LPS: negate x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Axis labels for axcodes in RAS space (MONAI's readers return RAS affines here; see _load_lps).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _image_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(METAIMAGE_SUFFIXES):
        return "metaimage"
    raise InputError(path, f"unknown image type; expected {', '.join(NIFTI_SUFFIXES + METAIMAGE_SUFFIXES)} "
                     "or a DICOM folder")


def _decimal_from_float32(values: np.ndarray) -> np.ndarray:
    """Replace each float32-representable value by its shortest decimal (0.4880000054836273 -> 0.488).

    NIfTI-1 stores the affine as float32; the decimal it was written from is the best guess of the exact value,
    so a spacing of 0.488 mm stays 0.488 mm. Values not representable in float32 (a qform affine) are kept.
    """
    out = values.copy()
    for index, value in np.ndenumerate(values):
        single = np.float32(value)
        if float(single) == value:
            out[index] = float(str(single))
    return out


@functools.lru_cache(maxsize=None)
def _loader(fmt: str, dtype: Any) -> Any:
    """A MONAI LoadImage for one format, built once: its constructor also builds every default reader."""
    # MONAI pulls in torch (seconds to import): only pay for it when a file is read.
    from monai.data import ITKReader, NibabelReader
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        # MONAI 1.6 warns on every LoadImage() that the GPU DICOM decoder plugin is unavailable; irrelevant here.
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        return LoadImage(reader=NibabelReader() if fmt == "nifti" else ITKReader(), image_only=True, dtype=dtype)


def _load_lps(path: Path, dtype: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Load a 3D NIfTI / MetaImage file; return its (Z, Y, X) array, its LPS affine (x, y, z order) and axcodes."""
    from monai.transforms import EnsureChannelFirst, Orientation

    if not path.is_file():
        raise InputError(path, "image file not found")
    fmt = _image_format(path)
    try:
        img = _loader(fmt, dtype)(str(path))
    except Exception as exc:  # corrupt file, missing .raw beside a .mhd, ...
        raise InputError(path, f"cannot read {fmt} image: {exc}") from exc
    shape = tuple(img.shape)
    # A trailing singleton (x, y, z, 1) is still a 3D volume.
    while len(shape) > 3 and shape[-1] == 1:
        img = img[..., 0]
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D image, got shape {shape}")
    space = str(img.meta.get("space", "RAS"))
    if space != "RAS":
        raise InputError(path, f"unexpected coordinate space {space} from the {fmt} reader")
    if fmt == "nifti":
        img.affine = _decimal_from_float32(np.asarray(img.affine, dtype=float))
    axcodes = "".join(nib.aff2axcodes(np.asarray(img.affine, dtype=float), labels=_RAS_LABELS))
    img = EnsureChannelFirst(channel_dim="no_channel")(img)
    img = Orientation(axcodes="LPS", labels=_RAS_LABELS)(img)
    array = np.asarray(img.array[0]).transpose(2, 1, 0)
    affine = _RAS_TO_LPS @ np.asarray(img.affine, dtype=float)
    if array.shape[0] < 2:
        raise InputError(path, f"a single slice (shape {array.shape} as z, y, x), not a volume")
    return np.ascontiguousarray(array), affine, axcodes


def _geometry(affine_lps: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Spacing (z, y, x), origin and direction from an LPS affine in (x, y, z) order."""
    zooms = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / zooms[None, :]
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    origin = tuple(float(v) for v in affine_lps[:3, 3])
    return spacing, origin, direction  # type: ignore[return-value]


def read_image(path: str | Path) -> CTVolume:
    """Read a CT volume in HU from a NIfTI (.nii, .nii.gz) or MetaImage (.mhd, .mha) file or a DICOM folder.

    The array is reoriented to the `CTVolume` convention (LPS axis codes, indexed z, y, x).
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    array, affine, axcodes = _load_lps(path, np.float32)
    spacing, origin, direction = _geometry(affine)
    meta = {"source": str(path), "format": _image_format(path), "original_axcodes": axcodes, "patient_id": None,
            "modality": None}
    return CTVolume(hu=array.astype(np.float32, copy=False), spacing=spacing, origin=origin, direction=direction,
                    meta=meta)


def _geometry_mismatch(array_shape, spacing, origin, direction, like: CTVolume) -> str | None:
    if tuple(array_shape) != tuple(like.shape):
        return f"shape {tuple(array_shape)} (z, y, x) differs from the image's {tuple(like.shape)}"
    if not np.allclose(spacing, like.spacing, rtol=SPACING_REL_TOL, atol=0.0):
        return f"spacing {tuple(round(s, 6) for s in spacing)} differs from the image's {tuple(like.spacing)}"
    if np.abs(np.subtract(origin, like.origin)).max() > ORIGIN_TOL_MM:
        return f"origin {tuple(round(o, 4) for o in origin)} differs from the image's {tuple(like.origin)}"
    if np.abs(direction - np.asarray(like.direction, dtype=float)).max() > DIRECTION_TOL:
        return (f"direction {np.round(direction, 5).tolist()} differs from the image's "
                f"{np.round(np.asarray(like.direction, float), 5).tolist()}")
    return None


def read_labels(path: str | Path, like: CTVolume, scheme: str = "project") -> np.ndarray:
    """Read a label volume (NIfTI / MetaImage) on ``like``'s grid as uint8 (Z, Y, X) project labels.

    Values are mapped from ``scheme`` (a key of `labels.LABEL_SCHEMES`); a value outside the scheme or a
    geometry (shape, spacing, origin, direction) differing from ``like`` is an `InputError`.
    """
    path = Path(path)
    if scheme not in LABEL_SCHEMES:
        raise InputError("scheme", f"unknown label scheme {scheme!r}; known: {sorted(LABEL_SCHEMES)}")
    array, affine, _ = _load_lps(path, None)
    spacing, origin, direction = _geometry(affine)
    problem = _geometry_mismatch(array.shape, spacing, origin, direction, like)
    if problem:
        raise InputError(path, f"label geometry does not match the image: {problem}")
    mapping = LABEL_SCHEMES[scheme]
    values = np.unique(array)
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(values, np.round(values)):
        raise InputError(path, f"label values are not integers: {values[values != np.round(values)][:10].tolist()}")
    unknown = [v for v in values.tolist() if int(v) not in mapping]
    if unknown:
        raise InputError(path, f"label values {unknown[:10]} are not in the {scheme!r} scheme "
                         f"(known: {sorted(mapping)})")
    out = np.zeros(array.shape, dtype=np.uint8)
    for value in values.tolist():
        if mapping[int(value)]:
            out[array == value] = mapping[int(value)]
    return out


def write_nifti(array: np.ndarray, like: CTVolume, path: str | Path) -> Path:
    """Write a (Z, Y, X) array with ``like``'s geometry as NIfTI, atomically; the dtype is kept (bool -> uint8)."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise InputError(path, f"a NIfTI file name must end with {' or '.join(NIFTI_SUFFIXES)}")
    array = np.asarray(array)
    if array.shape != tuple(like.shape):
        raise InputError(path, f"array shape {array.shape} differs from the image's {tuple(like.shape)}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    affine = like.affine_ras()
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code="scanner")
    img.set_qform(affine, code="scanner")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix, since nibabel picks gzip from it.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
