"""NIfTI / MetaImage / NRRD volumes (and DICOM folders) to `CTVolume`, label volumes, and NIfTI output.

NIfTI files are loaded with MONAI's NibabelReader, MetaImage (.mha, .mhd) and NRRD (.nrrd, .nhdr; DeepCAC's
``img.nrrd``) with SimpleITK (no ITK Python wheels needed); both give an affine in RAS, and the array is
reoriented with MONAI's ``Orientation`` to LPS axis codes, so that the (x, y, z) array transposed to (z, y, x)
follows the `CTVolume` convention: columns run patient right -> left, rows anterior -> posterior, slices feet -> head.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.io.dicom import read_dicom_series
from coronary_calcium.io.manifest import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES, NRRD_SUFFIXES, image_format
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import LABEL_SCHEMES

# Geometry a label volume may differ from its image by (NIfTI stores the affine as float32).
SPACING_REL_TOL = 1e-3
ORIGIN_TOL_MM = 0.01
DIRECTION_TOL = 1e-4
# RAS <-> LPS: negate x and y.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Axis labels for axcodes in RAS space (MONAI's readers return RAS affines here; see _load_lps).
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
# Headers claiming more voxels are refused before reading: 1e9 voxels are 4 GB as float32 (512 x 512 x 3800).
MAX_VOXELS = 1_000_000_000
# A MetaImage header is a few hundred bytes of text; a .mha's binary data follows it.
_METAIMAGE_HEADER_BYTES = 1 << 16
_MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}


def _image_format(path: Path) -> str:
    """The format of an image file (`image_format`); InputError for anything else."""
    fmt = image_format(path)
    if fmt in ("dicom", "unknown"):
        known = ", ".join(NIFTI_SUFFIXES + METAIMAGE_SUFFIXES + NRRD_SUFFIXES)
        raise InputError(path, f"unknown image type; expected {known} or a DICOM folder")
    return fmt


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


def _reason(exc: BaseException) -> str:
    """One line saying why a reader failed (ITK's messages span lines; some exceptions have no message)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}" if text else type(exc).__name__


def _size_problem(shape: tuple[int, ...]) -> str | None:
    n = math.prod(int(d) for d in shape)
    if n > MAX_VOXELS:
        return (f"size too large: the header claims {' x '.join(str(int(d)) for d in shape)} = {n:.3g} voxels; at "
                f"most {MAX_VOXELS:.0e} are read")
    return None


def _nifti_header(path: Path) -> Any:
    """The NIfTI-1 / -2 header as written: nibabel's load replaces a zero pixdim by 1 mm, hiding it."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as f:  # gunzips a .nii.gz
            block = f.read(nib.Nifti2Header.template_dtype.itemsize)
    except (OSError, EOFError, zlib.error) as exc:  # not gzip data, or a truncated stream
        raise InputError(path, f"cannot read nifti image: {_reason(exc)}") from None
    if not block:
        raise InputError(path, "cannot read nifti image: the file is empty")
    for klass, magic in ((nib.Nifti1Header, b"n+1"), (nib.Nifti2Header, b"n+2")):
        size = klass.template_dtype.itemsize
        if len(block) < size:
            continue
        header = klass(block[:size], check=False)
        if int(header["sizeof_hdr"]) == size and header["magic"].item() == magic:
            return header
    raise InputError(path, f"cannot read nifti image: no NIfTI-1 or NIfTI-2 header ({len(block)} bytes, "
                     "wrong size field or magic)")


def _check_nifti(path: Path) -> None:
    """Refuse, before reading, what nibabel would read wrongly or not at all."""
    header = _nifti_header(path)
    try:
        dtype, shape = header.get_data_dtype(), tuple(int(d) for d in header.get_data_shape())
    except Exception as exc:  # an unknown datatype code or a malformed dim field
        raise InputError(path, f"cannot read nifti image: malformed header: {_reason(exc)}") from None
    if dtype.kind == "c":
        raise InputError(path, f"complex-valued voxels ({dtype}): a CT image holds real HU values")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(path, f"voxel type {dtype} is not a scalar number type (an RGB image?)")
    problem = _size_problem(shape)
    if problem:
        raise InputError(path, problem)
    pixdim = _decimal_from_float32(np.asarray(header["pixdim"][1:1 + min(3, len(shape))], dtype=float)).tolist()
    if not all(math.isfinite(v) and v > 0 for v in pixdim):
        raise InputError(path, f"pixel spacing {pixdim} mm in the header (pixdim): must be finite and positive "
                         "(nibabel would silently read a zero as 1 mm)")
    if not path.name.lower().endswith(".gz"):
        offset = max(int(header.get_data_offset()), header.template_dtype.itemsize + 4)
        needed = offset + math.prod(shape) * dtype.itemsize
        if path.stat().st_size < needed:
            raise InputError(path, f"file shorter than the header says: {path.stat().st_size} bytes, the header's "
                             f"{' x '.join(map(str, shape))} {dtype} voxels need {needed}")


def _metaimage_fields(path: Path) -> tuple[dict[str, str], list[str], int]:
    """The MetaImage header's ``Key = Value`` fields up to ElementDataFile (the last one), the data file names
    (a LIST's lines), and where the header ends (a .mha's data starts there)."""
    with open(path, "rb") as f:
        head = f.read(_METAIMAGE_HEADER_BYTES)
    fields: dict[str, str] = {}
    end = 0
    lines = head.split(b"\n")
    for i, raw in enumerate(lines):
        end += len(raw) + 1
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            if value.strip().upper() == "LIST":
                return fields, [ln.decode("latin-1").strip() for ln in lines[i + 1:] if ln.strip()], end
            return fields, [] if value.strip().upper() == "LOCAL" else [value.strip()], end
    raise InputError(path, "not a MetaImage header: no ElementDataFile line"
                     + (" (the file is empty)" if not head else ""))


def _check_metaimage(path: Path) -> None:
    """Refuse, before ITK reads it, a MetaImage whose data file is missing, outside its folder, or too small."""
    fields, names, header_end = _metaimage_fields(path)
    try:
        shape = tuple(int(v) for v in fields.get("DimSize", "").split())
        spacing = [float(v) for v in (fields.get("ElementSpacing") or fields.get("ElementSize") or "1").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        raise InputError(path, f"malformed MetaImage header: DimSize {fields.get('DimSize')!r}, ElementSpacing "
                         f"{fields.get('ElementSpacing')!r}") from None
    problem = _size_problem(shape)
    if problem:
        raise InputError(path, problem)
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise InputError(path, f"element spacing {spacing} mm in the header: must be finite and positive")
    if channels != 1:
        raise InputError(path, f"{channels} channels per voxel: not a scalar CT image")
    for name in names:
        # A header may only point beside itself (or below): never elsewhere on the machine.
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
            raise InputError(path, f"ElementDataFile {name!r} points outside the header's folder; it must name "
                             "a file beside the header")
    for name in names:
        if "%" not in name and not (path.parent / name).is_file():
            raise InputError(path, f"data file {name} (ElementDataFile) not found beside the header")
    if len(names) > 1 or any("%" in name for name in names):
        return  # a LIST or a file-name pattern: several files, ITK checks them
    data = path.parent / names[0] if names else path  # ElementDataFile LOCAL: the data follows the header
    size = _MET_TYPE_BYTES.get(fields.get("ElementType", ""))
    skip = int(fields.get("HeaderSize", "0") or 0) if names else header_end
    if size is None or skip < 0 or fields.get("CompressedData", "False").lower() == "true":
        return  # unknown element type, HeaderSize -1 (ITK finds the data at the end), or compressed data
    needed, have = math.prod(shape) * size, data.stat().st_size - skip
    if have < needed:
        raise InputError(path, f"data file shorter than the header says: {have} bytes of data, the header's "
                         f"{' x '.join(map(str, shape))} {fields['ElementType']} voxels need {needed}")


def _nrrd_fields(path: Path) -> dict[str, str]:
    """The NRRD header's ``field: value`` lines (up to the blank line that ends it), keys lower-case."""
    with open(path, "rb") as f:
        head = f.read(_METAIMAGE_HEADER_BYTES)
    if not head.startswith(b"NRRD"):
        raise InputError(path, "not a NRRD file: it does not start with the NRRD magic"
                         + (" (the file is empty)" if not head else ""))
    fields: dict[str, str] = {}
    for raw in head.split(b"\n")[1:]:
        line = raw.decode("latin-1").rstrip("\r")
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip().lower()] = value.lstrip("=").strip()
    return fields


def _check_nrrd(path: Path) -> None:
    """Refuse, before SimpleITK reads it, a NRRD whose detached data file lies outside its folder or is missing."""
    fields = _nrrd_fields(path)
    name = fields.get("data file") or fields.get("datafile")
    if not name:
        return
    names = [name] if " " not in name and name.upper() != "LIST" else []  # a list or pattern: SimpleITK checks
    for one in names:
        if os.path.isabs(one) or os.path.normpath(one).split(os.sep)[0] == os.pardir:
            raise InputError(path, f"data file {one!r} points outside the header's folder; it must name a file beside "
                             "the header")
        if not (path.parent / one).is_file():
            raise InputError(path, f"data file {one} (data file) not found beside the header")


def _check_sitk_header(path: Path, fmt: str) -> None:
    """Refuse, from the header SimpleITK reads (no voxels), a huge, multi-channel, complex or unspaced image."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"cannot read {fmt} image: {_reason(exc)}") from None
    problem = _size_problem(tuple(reader.GetSize()))
    if problem:
        raise InputError(path, problem)
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    if "complex" in pixel:
        raise InputError(path, f"complex-valued voxels ({pixel}): a CT image holds real HU values")
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"{reader.GetNumberOfComponents()} channels per voxel: not a scalar CT image")
    spacing = [float(v) for v in reader.GetSpacing()]
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise InputError(path, f"element spacing {spacing} mm in the header: must be finite and positive")


def _read_sitk(path: Path, fmt: str, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """A MetaImage / NRRD file with SimpleITK: its (x, y, z) array (trailing singleton axes dropped) and its RAS
    affine in (x, y, z) order, as MONAI's ITKReader gave them."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # corrupt or truncated data, an unreadable pattern of files, ...
        raise InputError(path, f"cannot read {fmt} image: {_reason(exc)}") from None
    size = list(image.GetSize())
    while len(size) > 3 and size[-1] == 1:
        image = image[(slice(None),) * (len(size) - 1) + (0,)]
        size = size[:-1]
    if len(size) != 3:
        raise InputError(path, f"expected a 3D image, got shape {tuple(size)}")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return array, _RAS_TO_LPS @ affine  # the same flip takes LPS to RAS


@functools.lru_cache(maxsize=None)
def _loader(dtype: Any) -> tuple[Any, Any]:
    """MONAI's LoadImage with a NibabelReader, built once: its constructor builds every default reader."""
    # MONAI pulls in torch (seconds to import): only pay for it when a file is read.
    from monai.data import NibabelReader
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        # MONAI 1.6 warns on every LoadImage() that the GPU DICOM decoder plugin is unavailable; irrelevant here.
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
        reader = NibabelReader()
        return LoadImage(reader=reader, image_only=True, dtype=dtype), reader


def _read_nifti(path: Path, dtype: Any) -> Any:
    load, reader = _loader(dtype)
    try:
        # Handing the reader over at call time makes LoadImage let the reader's own exception through; with only
        # the constructor's, it would catch it and raise one whose message is the whole formatted traceback.
        img = load(str(path), reader=reader)
    except Exception as exc:  # corrupt data, a truncated .nii.gz, ...
        raise InputError(path, f"cannot read nifti image: {_reason(exc)}") from None
    space = str(img.meta.get("space", "RAS"))
    if space != "RAS":
        raise InputError(path, f"unexpected coordinate space {space} from the nifti reader")
    img.affine = _decimal_from_float32(np.asarray(img.affine, dtype=float))
    return img


def _load_lps(path: Path, dtype: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Load a 3D NIfTI / MetaImage / NRRD file; return its (Z, Y, X) array, LPS affine (x, y, z order) and axcodes."""
    from monai.transforms import EnsureChannelFirst, Orientation

    if not path.is_file():
        raise InputError(path, "image file not found")
    fmt = _image_format(path)
    if path.stat().st_size == 0:
        raise InputError(path, f"cannot read {fmt} image: the file is empty")
    if fmt == "nifti":
        _check_nifti(path)
        img = _read_nifti(path, dtype)
    else:
        from monai.data import MetaTensor

        if fmt == "metaimage":
            _check_metaimage(path)
        else:
            _check_nrrd(path)
        _check_sitk_header(path, fmt)
        array, affine = _read_sitk(path, fmt, dtype)
        img = MetaTensor(array, affine=affine, meta={"space": "RAS"})
    shape = tuple(img.shape)
    # A trailing singleton (x, y, z, 1) is still a 3D volume.
    while len(shape) > 3 and shape[-1] == 1:
        img = img[..., 0]
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D image, got shape {shape}")
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
    """Read a CT volume in HU from a NIfTI (.nii, .nii.gz), MetaImage (.mhd, .mha) or NRRD (.nrrd, .nhdr) file or a
    DICOM folder.

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
    """Read a label volume (NIfTI / MetaImage / NRRD) on ``like``'s grid as uint8 (Z, Y, X) project labels.

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
    # (X, Y, Z) as a view: a C-ordered (Z, Y, X) array is then Fortran-ordered, NIfTI's order, so nibabel writes
    # it without the two strided copies a C-contiguous (X, Y, Z) copy costs (8x faster for a 48-slice mask).
    img = nib.Nifti1Image(array.transpose(2, 1, 0), affine)
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
