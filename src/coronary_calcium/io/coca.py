"""Stanford AIMI COCA gated calcium annotations: OsiriX ROI exports (Apple plist XML).

Reading follows the rules verified on real files (shared/reference/datasets.md): empty ROIs are skipped, a ROI
is matched to its slice by the z of ``Point_mm`` (falling back to ``ImageIndex`` counted in ascending z, 0
included), ``Point_px`` is rasterised as a polygon with pixel centres at integer coordinates, several ROIs on
one slice are united, and "Left Circumflex Artery" is the LCX.
"""

from __future__ import annotations

import os
import plistlib
import re
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

import numpy as np
from scipy import ndimage

from coronary_calcium.errors import InputError
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import ARTERY_NAMES, COCA_ROI_NAMES, CORONARY_LABELS, LABEL_NAMES
from coronary_calcium.scoring.agatston import density_weight

# A pixel centre this close (in pixels) to a polygon edge lies on the boundary and belongs to the ROI.
BOUNDARY_TOL_PX = 1e-6
# A ROI matches a slice when the z of its points is within this fraction of the slice increment.
SLICE_MATCH_FRACTION = 0.5
# OsiriX ROI type tCPolygon (closed polygon), written for every ROI.
OSIRIX_CLOSED_POLYGON = 11

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_LABEL_TO_ROI_NAME = {label: name for name, label in COCA_ROI_NAMES.items()}
# Moore-neighbour offsets (dx, dy) clockwise on screen (y down), starting east.
_CLOCKWISE = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))


def _parse_point(text: Any, dims: int, path: Path, where: str) -> tuple[float, ...]:
    values = _NUMBER.findall(text) if isinstance(text, str) else []
    if len(values) != dims:
        raise InputError(path, f"{where}: malformed point {text!r} (expected {dims} numbers)")
    return tuple(float(v) for v in values)


def _load_rois(path: Path) -> list[tuple[int, int, dict[str, Any]]]:
    """The non-empty ROIs of a COCA XML as (ImageIndex, position in image, ROI dict), in file order."""
    if not path.is_file():
        raise InputError(path, "COCA XML file not found")
    try:
        with open(path, "rb") as f:
            root = plistlib.load(f)
    except (plistlib.InvalidFileException, ExpatError, ValueError, TypeError, OverflowError) as exc:
        raise InputError(path, f"malformed COCA XML (not a readable plist): {exc}") from exc
    images = root.get("Images") if isinstance(root, dict) else None
    if not isinstance(images, list):
        raise InputError(path, "malformed COCA XML: no 'Images' list at the root")
    rois = []
    for n, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("ImageIndex"), int):
            raise InputError(path, f"malformed COCA XML: image entry {n} has no integer ImageIndex")
        index = image["ImageIndex"]
        entries = image.get("ROIs", [])
        if not isinstance(entries, list):
            raise InputError(path, f"malformed COCA XML: ROIs of image {index} is not a list")
        for j, roi in enumerate(entries):
            if not isinstance(roi, dict):
                raise InputError(path, f"malformed COCA XML: ROI {j} of image {index} is not a dict")
            points = roi.get("Point_px") or []
            if not isinstance(points, list):
                raise InputError(path, f"malformed COCA XML: Point_px of ROI {j} in image {index} is not a list")
            if not points or roi.get("NumberOfPoints", len(points)) == 0:
                continue  # empty ROIs exist in the real files and carry nothing
            name = roi.get("Name")
            if name not in COCA_ROI_NAMES:
                raise InputError(path, f"unknown ROI name {name!r} in image {index}; known: {sorted(COCA_ROI_NAMES)}")
            rois.append((index, j, roi))
    return rois


def _polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (rows, cols) whose centres lie inside (even-odd) or on the polygon ``points`` (N, 2) as (x, y)."""
    mask = np.zeros(shape, dtype=bool)
    x_lo = max(int(np.floor(points[:, 0].min() - BOUNDARY_TOL_PX)), 0)
    x_hi = min(int(np.ceil(points[:, 0].max() + BOUNDARY_TOL_PX)), shape[1] - 1)
    y_lo = max(int(np.floor(points[:, 1].min() - BOUNDARY_TOL_PX)), 0)
    y_hi = min(int(np.ceil(points[:, 1].max() + BOUNDARY_TOL_PX)), shape[0] - 1)
    if x_lo > x_hi or y_lo > y_hi:
        return mask
    py, px = np.mgrid[y_lo : y_hi + 1, x_lo : x_hi + 1].astype(float)
    inside = np.zeros(px.shape, dtype=bool)
    on_edge = np.zeros(px.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(points, np.roll(points, -1, axis=0)):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        if length2 == 0.0:
            on_edge |= (np.abs(px - ax) <= BOUNDARY_TOL_PX) & (np.abs(py - ay) <= BOUNDARY_TOL_PX)
            continue
        length = np.sqrt(length2)
        t = ((px - ax) * dx + (py - ay) * dy) / length2
        cross = (px - ax) * dy - (py - ay) * dx
        on_edge |= (np.abs(cross) <= BOUNDARY_TOL_PX * length) & (t >= -BOUNDARY_TOL_PX / length) & (
            t <= 1 + BOUNDARY_TOL_PX / length)
        straddles = (ay > py) != (by > py)
        if straddles.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                x_cross = ax + (py - ay) * dx / dy
            inside ^= straddles & (px < x_cross)
    mask[y_lo : y_hi + 1, x_lo : x_hi + 1] = inside | on_edge
    return mask


def read_coca_xml(path: str | Path, like: CTVolume) -> np.ndarray:
    """Rasterise a COCA calcium XML onto ``like``'s grid: uint8 (Z, Y, X) labels (LM 1, LAD 2, LCX 3, RCA 4).

    Where ROIs of different arteries overlap, the ROI first in the file keeps its pixels.
    """
    path = Path(path)
    rois = _load_rois(path)
    depth, rows, cols = like.shape
    slice_z = like.slice_z_mm()
    tolerance = SLICE_MATCH_FRACTION * abs(float(like.spacing[0]))
    labels = np.zeros(like.shape, dtype=np.uint8)
    for index, j, roi in rois:
        where = f"ROI {j} ({roi['Name']}) of image {index}"
        points_px = np.array([_parse_point(p, 2, path, where) for p in roi["Point_px"]], dtype=float)
        points_mm = roi.get("Point_mm") or []
        k = None
        if isinstance(points_mm, list) and points_mm:
            z = float(np.median([_parse_point(p, 3, path, where)[2] for p in points_mm]))
            nearest = int(np.argmin(np.abs(slice_z - z)))
            if abs(slice_z[nearest] - z) <= tolerance:
                k = nearest
        if k is None:
            if not 0 <= index < depth:
                raise InputError(path, f"{where}: no slice at the z of its points and ImageIndex {index} is outside "
                                 f"the volume's {depth} slices")
            k = index
        mask = _polygon_mask(points_px, (rows, cols)) & (labels[k] == 0)
        labels[k][mask] = COCA_ROI_NAMES[roi["Name"]]
    return labels


def _trace_boundary(component: np.ndarray) -> np.ndarray:
    """Moore-neighbour trace of the outer boundary pixel centres of one 8-connected component, as (x, y)."""
    ys, xs = np.nonzero(component)
    start = (int(xs[0]), int(ys[0]))  # first in raster order: nothing above it or to its left
    rows, cols = component.shape

    def foreground(x: int, y: int) -> bool:
        return 0 <= x < cols and 0 <= y < rows and bool(component[y, x])

    def step(current: tuple[int, int], back: int) -> tuple[tuple[int, int], int] | None:
        # Search clockwise from the background neighbour we came from; the new backtrack is the one before.
        for i in range(1, 9):
            d = (back + i) % 8
            nx, ny = current[0] + _CLOCKWISE[d][0], current[1] + _CLOCKWISE[d][1]
            if foreground(nx, ny):
                previous = (back + i - 1) % 8
                bx, by = current[0] + _CLOCKWISE[previous][0], current[1] + _CLOCKWISE[previous][1]
                # Express the backtrack as a direction seen from the new pixel.
                return (nx, ny), _CLOCKWISE.index((bx - nx, by - ny))
        return None

    first = step(start, 4)  # west of the start pixel is background
    if first is None:
        return np.array([start], dtype=float)
    contour = [start]
    state = first
    limit = 8 * int(component.sum()) + 8
    for _ in range(limit):
        if state[0] == start and len(contour) > 1 and step(*state) == first:
            break
        contour.append(state[0])
        state = step(*state)  # type: ignore[misc]
    else:
        raise RuntimeError("boundary trace did not close")  # a bug, not bad input
    return np.array(contour, dtype=float)


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Drop vertices lying between their neighbours on a straight run; spurs (reversals) are kept."""
    if len(points) < 3:
        return points
    keep = []
    for i in range(len(points)):
        a, b, c = points[i - 1], points[i], points[(i + 1) % len(points)]
        u, v = b - a, c - b
        keep.append(not (u[0] * v[1] - u[1] * v[0] == 0 and u @ v > 0))
    return points[np.array(keep)]


def _exact_polygons(component: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Polygons, each with the pixels it covers, whose union is exactly ``component`` (one, unless it has holes).

    A component whose outer contour would also cover background (a hole) is cut above the first row holding
    such a pixel, which opens the hole; the pieces are handled the same way. Single rows are always exact.
    """
    polygon = _drop_collinear(_trace_boundary(component))
    covered = _polygon_mask(polygon, component.shape)
    if np.array_equal(covered, component):
        return [(polygon, covered)]
    rows = np.flatnonzero(component.any(axis=1))
    cut = int(np.flatnonzero((covered & ~component).any(axis=1))[0])
    cut = max(cut, int(rows[0]) + 1)
    upper, lower = component.copy(), component.copy()
    upper[cut:] = False
    lower[:cut] = False
    polygons = []
    for piece in (upper, lower):
        parts, n = ndimage.label(piece, structure=np.ones((3, 3), dtype=int))
        for part in range(1, n + 1):
            polygons.extend(_exact_polygons(parts == part))
    return polygons


def _to_mm(affine: np.ndarray, points_px: np.ndarray, k: int) -> np.ndarray:
    """LPS millimetres of (x, y) pixel points on slice ``k``."""
    homogeneous = np.column_stack([points_px, np.full(len(points_px), float(k)), np.ones(len(points_px))])
    return (homogeneous @ affine.T)[:, :3]


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):f}" for v in values) + ")"


def write_coca_xml(labels: np.ndarray, volume: CTVolume, path: str | Path) -> Path:
    """Write coronary labels (1-4) as a COCA/OsiriX calcium XML; ``read_coca_xml`` reproduces them exactly.

    One ROI per 2D 8-connected component per artery per slice (a component with holes gets several ROIs whose
    union is exact, each with the statistics of its own pixels); ImageIndex counts slices in ascending z.
    Labels 5 and 6 (aortic, valve) are not coronary and are not written. The write is atomic and deterministic.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != tuple(volume.shape):
        raise InputError(path, f"label shape {labels.shape} differs from the volume's {tuple(volume.shape)}")
    unknown = sorted(set(np.unique(labels).tolist()) - set(LABEL_NAMES))
    if unknown:
        raise InputError(path, f"label values {unknown[:10]} are not project labels {sorted(LABEL_NAMES)}")
    affine = volume.affine_lps()
    pixel_area_cm2 = volume.pixel_area_mm2 / 100.0
    eight = np.ones((3, 3), dtype=int)
    images = []
    for k in range(labels.shape[0]):
        rois: list[dict[str, Any]] = []
        present = set(np.unique(labels[k]).tolist())
        for label in (label for label in CORONARY_LABELS if label in present):
            parts, _ = ndimage.label(labels[k] == label, structure=eight)
            # Work inside each component's bounding box: full 512 x 512 slices per component are slow.
            for part, box in enumerate(ndimage.find_objects(parts), start=1):
                offset = np.array([box[1].start, box[0].start], dtype=float)
                for local_polygon, covered in _exact_polygons(parts[box] == part):
                    polygon = local_polygon + offset
                    hu = np.asarray(volume.hu[k][box][covered], dtype=float)
                    ys, xs = np.nonzero(covered)
                    points_mm = _to_mm(affine, polygon, k)
                    closed = np.vstack([points_mm, points_mm[:1]])
                    rois.append({
                        "Name": _LABEL_TO_ROI_NAME[label],
                        "IndexInImage": len(rois),
                        "Type": OSIRIX_CLOSED_POLYGON,
                        "Area": float(covered.sum() * pixel_area_cm2),
                        "Length": float(np.linalg.norm(np.diff(closed, axis=0), axis=1).sum() / 10.0),  # cm
                        "Center": _fmt(_to_mm(affine, np.array([[xs.mean(), ys.mean()]]) + offset, k)[0]),
                        "NumberOfPoints": len(polygon),
                        "Point_px": [_fmt(p) for p in polygon],
                        "Point_mm": [_fmt(p) for p in points_mm],
                        "Min": float(hu.min()),
                        "Max": float(hu.max()),
                        "Mean": float(hu.mean()),
                        "Dev": float(hu.std()),
                        "Total": float(hu.sum()),
                    })
        if rois:
            images.append({"ImageIndex": k, "NumberOfROIs": len(rois), "ROIs": rois})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            plistlib.dump({"Images": images}, f, fmt=plistlib.FMT_XML, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def coca_xml_agatston(path: str | Path, slice_increment_mm: float = 3.0) -> dict[str, float]:
    """Reference Agatston score from a COCA XML alone: sum over ROIs of Area_cm2 x 100 x weight(Max) x increment/3.

    No minimum lesion area is applied (the data set's readers did not). Returns totals for LM, LAD, LCX, RCA and
    "total".
    """
    path = Path(path)
    scores = {name: 0.0 for name in ARTERY_NAMES}
    for index, j, roi in _load_rois(path):
        try:
            area_cm2, peak = float(roi["Area"]), float(roi["Max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"ROI {j} ({roi['Name']}) of image {index}: no numeric Area / Max") from exc
        artery = LABEL_NAMES[COCA_ROI_NAMES[roi["Name"]]]
        scores[artery] += area_cm2 * 100.0 * density_weight(peak) * slice_increment_mm / 3.0
    scores["total"] = float(sum(scores.values()))
    return scores


# --- non-gated scores.xlsx -------------------------------------------------------------------------------------------

# deidentified_nongated/scores.xlsx: one row per patient, "filename" holds "<id>A"; LCA is the left main.
COCA_SCORE_COLUMNS = {"LCA": "LM", "LAD": "LAD", "LCX": "LCX", "RCA": "RCA", "total": "total"}
COCA_ROW_SUFFIX = "A"
# The header row is looked for among the first rows of each sheet (a title row above it is tolerated).
_HEADER_SEARCH_ROWS = 10
# The sheet's total may differ from the sum of its four arteries by rounding: at most this much (or 1 %).
SCORE_SUM_TOL = 1.0


def _score_value(value: Any, path: Path, where: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(path, f"{where}: empty score cell (a score of 0 must be written as 0; a formula without a "
                         "saved value also reads empty: save the sheet in Excel or LibreOffice)")
    if isinstance(value, bool):
        raise InputError(path, f"{where}: {value!r} is not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # numbers stored as text are common
    except (TypeError, ValueError):
        raise InputError(path, f"{where}: {value!r} is not a number") from None
    if not np.isfinite(number) or number < 0:
        raise InputError(path, f"{where}: score {value!r} must be a finite number >= 0")
    return number


def _scores_header(rows: list[tuple[Any, ...]]) -> tuple[int, dict[str, int]] | None:
    """(row index, column of each COCA header) of the first row holding "filename" (case-insensitive), or None."""
    for i, row in enumerate(rows[:_HEADER_SEARCH_ROWS]):
        names = [str(c).strip().lower() if c is not None else "" for c in row]
        if "filename" in names:
            return i, {n: j for j, n in enumerate(names) if n}
    return None


def read_coca_scores(path: str | Path) -> dict[str, dict[str, float]]:
    """COCA's non-gated ``scores.xlsx`` (openpyxl) as {filename cell: {"LM", "LAD", "LCX", "RCA", "total"}}.

    The header row (within the first rows of the first sheet that has one) must name filename, LCA, LAD, LCX, RCA
    and total (case-insensitive); LCA is the left main, reported as LM. Every score must be a number >= 0 (numbers
    stored as text are read); an empty cell, a repeated filename, or a total that differs from the sum of its
    arteries by more than rounding is an `InputError` naming the row. Rows without a filename are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "COCA scores file not found")
    import zipfile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from None
    try:
        for sheet in book.worksheets:
            rows = [tuple(r) for r in sheet.iter_rows(values_only=True)]
            header = _scores_header(rows)
            if header is not None:
                return _scores_rows(path, sheet.title, rows, *header)
    finally:
        book.close()
    raise InputError(path, f"no sheet has a header row with 'filename' (expected columns: filename, "
                     f"{', '.join(COCA_SCORE_COLUMNS)})")


def _scores_rows(path: Path, title: str, rows: list[tuple[Any, ...]], start: int,
                 columns: dict[str, int]) -> dict[str, dict[str, float]]:
    missing = [c for c in COCA_SCORE_COLUMNS if c.lower() not in columns]
    if missing:
        raise InputError(path, f"sheet {title!r}: missing column(s) {', '.join(missing)} (header row {start + 1} "
                         f"has: {', '.join(columns)})")
    out: dict[str, dict[str, float]] = {}
    first_row: dict[str, int] = {}
    for i, row in enumerate(rows[start + 1:], start=start + 2):
        cell = row[columns["filename"]] if columns["filename"] < len(row) else None
        key = str(cell).strip() if cell is not None else ""
        if not key:
            continue
        if key in out:
            raise InputError(path, f"sheet {title!r} row {i}: filename {key!r} repeats row {first_row[key]}")
        scores = {}
        for column, name in COCA_SCORE_COLUMNS.items():
            j = columns[column.lower()]
            scores[name] = _score_value(row[j] if j < len(row) else None, path,
                                        f"sheet {title!r} row {i} ({key}), column {column}")
        arteries = sum(scores[a] for a in ("LM", "LAD", "LCX", "RCA"))
        if abs(arteries - scores["total"]) > max(SCORE_SUM_TOL, 0.01 * scores["total"]):
            raise InputError(path, f"sheet {title!r} row {i} ({key}): total {scores['total']:g} differs from the sum "
                             f"of LCA, LAD, LCX and RCA ({arteries:g})")
        out[key] = scores
        first_row[key] = i
    if not out:
        raise InputError(path, f"sheet {title!r}: no rows with a filename below the header")
    return out


def coca_score_row(
    scores: dict[str, dict[str, float]], patient_id: str, row: str | None, path: Path
) -> tuple[str, dict[str, float]]:
    """The row of a patient: ``row`` when given, else "<patient_id>A" (COCA's filename column), else the id itself."""
    candidates = [row] if row is not None else [f"{patient_id}{COCA_ROW_SUFFIX}", patient_id]
    for key in candidates:
        if key in scores:
            return key, scores[key]
    looked = " or ".join(map(repr, candidates))
    raise InputError(path, f"no row for patient {patient_id!r} (looked for filename {looked}; the sheet has "
                     f"{len(scores)} rows, e.g. {', '.join(map(repr, list(scores)[:3]))})")
