"""Classical anatomy of a non-contrast chest CT (thresholds, morphology, nearest-point distances; numpy + scipy).

Works on gated calcium-score scans (180-250 mm field of view on the heart, body cut off by the image edge, lungs
only at the sides, 2.5-3 mm slices) and on non-gated full-chest scans (330-450 mm, whole outline, 5 mm slices).
Everything is computed on a coarse grid: the slices as they are, in-plane blocks of ``factor`` x ``factor`` pixels
averaged (blocks of >= `TARGET_PIXEL_MM`, at most `MAX_BLOCKS` per side: 1.8-3.5 mm for a 512 matrix), so the
cost does not grow with the matrix. The volume is (Z, Y, X), LPS: rows run posterior, columns to the patient's left.

How each structure is found, and why that holds on real scans:

- field: blocks whose mean is at or above `PADDING_HU`, less one block at their edge. Pixels outside the
  reconstruction circle are stored as padding (-2048, -3024); they are neither air nor body, never an outline.
- body: the largest 3D component (>= `MIN_BODY_ML`) of the blocks above `AIR_HU` (soft tissue, fat, bone), opened
  by one block so that a thin table shell or a cable does not join it; per slice, filled between its first and
  last block along every row and every column (union), holes filled. A chest's outline is convex enough that the
  fill keeps the air in the corners of a gated image outside, while a lung cut off by the image edge still lies
  between the anterior and posterior body wall in its column; the image border is never an outline. Gas pockets
  the fill closed although they open to the outside (air between the breasts, at the edge of a gated image) are
  outside again: they are pure gas (below `GAS_HU`), a lung is not. A lung the image cuts off at a corner (its rows
  and its columns both end in lung) is inside again: air outside the body that touches the image border and the
  body, is mostly not pure gas and lies in part inside the body's convex hull (`_lung_cut_by_edge`).
- lungs: 3D components (6-connected) of blocks at or below `AIR_HU` at least `WALL_MM` inside the body, whose core
  (in-plane opening) holds >= `MIN_LUNG_ML` and a tenth of the largest one's, and with less than `GAS_SHARE` of
  pure-gas blocks (below `GAS_HU`). Lung parenchyma with its vessels averages -950..-600 HU over 2 mm blocks; the
  trachea and bowel gas are about -1000 HU; air trapped under the back or in a cushion is a thin film at the skin.
- bone: 3D components (26-connected, bridged along z over gaps up to `DISC_GAP_MM` so that the vertebrae join
  across their discs) of blocks of mean >= `DENSE_HU` inside the body that are large and long (>= `BONE_MIN_MM3`
  with a longest extent >= `BONE_MIN_EXTENT_MM`, or a z extent >= `BONE_MIN_Z_MM` or 80 % of a shorter scan:
  spine, sternum, ribs), or that lie mostly (`BEHIND_SHARE`) behind lung (ribs, costal cartilage, calcified lung
  nodules: "dense and outside the mediastinum"). A coronary plaque (<= ~1,500 mm^3, within ~7 slices, between the
  heart centre and the lungs) passes neither rule, and 2 mm block means keep small plaques out of the dense mask.
- heart / mediastinum: per slice, in every row whose first lung block lies right of the lungs' midline and whose
  last lies left of it, the blocks between them that are inside the body, not lung and not size-rule bone (grown
  by a block); cut from the front of the spine backwards (bone in the central columns behind the lungs' mean row)
  and reduced to its largest component. Without contrast heart, aorta and fat look alike, but every real chest
  has its mediastinum between two lungs and in front of the spine. A region shorter along z than
  `HEART_MIN_Z_MM` (or 80 % of a shorter scan) lies between lung bases or apices and is dropped. Its centre is the
  area^2-weighted mean of the slice centroids (the heart's slices are the widest), its radius sqrt(A / pi) of the
  90th percentile slice area A: dividing by it makes gated and full-chest positions comparable.
- behind lung: per slice, the blocks farther from the slice's heart-region centre than the first lung block in
  their 5 degree sector: the chest wall and ribs, never the heart or the coronary arteries on its surface.

A structure that is not found (a head CT, a phantom without lungs, a one-slice crop, air) sets ``found[name]``
False and adds a note naming the fallback; its features take the fallback values listed in `ANATOMY_FEATURES`.
Callers that decide by anatomy should read ``found`` (the features alone cannot tell "far" from "missing").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, cKDTree

from coronary_calcium.errors import InputError

__all__ = ["ANATOMY_FEATURES", "Anatomy", "CAP_MM", "anatomy_features", "find_anatomy"]

TARGET_PIXEL_MM = 1.8  # smallest in-plane size of a coarse block
MAX_BLOCKS = 128  # and at most this many blocks per row / column (a 512 matrix: blocks of >= 4 pixels)
MAX_SAMPLES = 16  # a candidate's features read at most this many of its voxels (evenly spread)
DISC_GAP_MM = 12.0  # dense structures this close along z are one (vertebrae across their discs)
PADDING_HU = -1050.0  # block means below this are outside the reconstructed field (padding), not air
AIR_HU = -500.0  # air and lung at or below, body above
GAS_HU = -950.0  # blocks below this are pure gas; lung parenchyma with its vessels averages above it
GAS_SHARE = 0.5  # an air component with at least this share of pure-gas blocks is gas (bowel, trachea)
WALL_MM = 4.0  # lung never comes this close to the skin: the chest wall is >= 10 mm thick
DENSE_HU = 130.0  # calcium / bone threshold at 120 kVp
MIN_LUNG_ML = 10.0
MIN_BODY_ML = 20.0
BONE_MIN_MM3 = 2000.0  # above any coronary plaque's dense volume (<= ~1,500 mm^3)
BONE_MIN_EXTENT_MM = 60.0  # ribs run far in-plane, plaques do not
BONE_MIN_Z_MM = 40.0  # spine and sternum run through the scan; a plaque spans <= ~7 slices
HULL_SHARE = 0.2  # a lung cut off by the image edge: 0.28-0.48 of it in the body's hull; room air <= 0.14
BEHIND_SHARE = 0.5  # a dense component with at least this share behind lung is extra-cardiac
SECTOR_DEG = 5.0
CAP_MM = 100.0  # distances are capped here (a structure farther away, or missing, reads as this)
HEART_MIN_Z_MM = 30.0  # a heart spans >= ~80 mm; a shorter scan needs the region on 80 % of its length
HEART_REL_CAP = 5.0  # heart_dx/dy/dz are clipped to +-5 radii

ANATOMY_FEATURES: tuple[str, ...] = (
    "lung_distance_mm",  # 3D distance from the candidate's nearest block to lung (0 inside); no lungs: 100
    "bone_distance_mm",  # 3D distance to the nearest bone block (0 in or touching bone); no bone: 100
    "in_bone",  # 1 when at least half of the candidate's voxels lie in or next to (1 block) bone blocks, else 0
    "behind_lung",  # share of the candidate's voxels behind lung as seen from the heart centre; no heart: 0
    "heart_depth_mm",  # in-plane signed distance to the heart region's edge on the slice (+ inside); no heart: 0
    "heart_dx",  # (candidate - heart centre) / heart radius: columns (+ patient left), rows (+ posterior),
    "heart_dy",  # slices (+ along the slice index), clipped to +-5; no heart: 0
    "heart_dz",
    "body_depth_mm",  # in-plane distance of its nearest voxel to the body outline (the image border is none);
    # no outline: 100
)


@dataclass
class Anatomy:
    """Masks on the coarse grid (Z, ceil(Y / factor), ceil(X / factor)) and what was found.

    factor: in-plane block size in pixels; spacing: the coarse grid's (z, y, x) spacing in mm; shape: the full
    volume's shape. heart_centre_mm: (z, y, x) in mm from the centre of the full volume's voxel [0, 0, 0];
    heart_radius_mm: the heart region's in-plane radius. behind_lung: the blocks behind lung (see module doc).
    """

    factor: int
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    field: np.ndarray
    body: np.ndarray
    lungs: np.ndarray
    bone: np.ndarray
    heart: np.ndarray
    behind_lung: np.ndarray
    heart_centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    heart_radius_mm: float = 0.0
    found: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def heart_centre_px(self) -> tuple[float, float] | None:
        """The heart region's in-plane centre as (row, column) pixel coordinates of the full matrix; None when no
        heart was found (where a heart-centred field of view falls back to the image centre)."""
        if not self.found.get("heart"):
            return None
        row_mm, col_mm = self.spacing[1] / self.factor, self.spacing[2] / self.factor
        return self.heart_centre_mm[1] / row_mm, self.heart_centre_mm[2] / col_mm


def _check(hu: np.ndarray, spacing) -> tuple[np.ndarray, tuple[float, float, float]]:
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise InputError("hu", f"must be a non-empty 3D (Z, Y, X) array, got shape {hu.shape}")
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError("spacing", f"must be three numbers, got {spacing!r}") from None
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError("spacing", f"must be three positive finite numbers (z, y, x) in mm, got {spacing!r}")
    return hu, sp  # type: ignore[return-value]


def _block_mean(hu: np.ndarray, f: int) -> np.ndarray:
    """Block means of f x f pixels; a partial block at the bottom / right edge averages what it has."""
    nz, ny, nx = hu.shape
    a = hu.astype(np.float32, copy=False)
    if f == 1:
        return _finite(np.array(a, dtype=np.float32))
    yc, xc = -(-ny // f), -(-nx // f)
    s = np.add.reduceat(a, np.arange(0, nx, f), axis=2)
    s = np.add.reduceat(s, np.arange(0, ny, f), axis=1)
    wy = np.minimum(f, ny - np.arange(yc) * f)
    wx = np.minimum(f, nx - np.arange(xc) * f)
    return _finite((s / (wy[:, None] * wx[None, :])).astype(np.float32))


def _finite(a: np.ndarray) -> np.ndarray:
    """NaN reads as padding, +-inf as the extremes of the HU range."""
    return np.clip(np.nan_to_num(a, nan=-3024.0), -3024.0, 3071.0, out=a)


def _fill_between(mask: np.ndarray) -> np.ndarray:
    """Per slice, the pixels between the first and last mask pixel of their row, or of their column."""
    seen = np.logical_or.accumulate
    rows = seen(mask, axis=2) & seen(mask[:, :, ::-1], axis=2)[:, :, ::-1]
    cols = seen(mask, axis=1) & seen(mask[:, ::-1], axis=1)[:, ::-1]
    return rows | cols


def _largest(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = True  # 2D connectivity per slice, for 3D arrays


def _find_body(coarse: np.ndarray, field_: np.ndarray, voxel_mm3: float) -> np.ndarray:
    """Inside the skin (see module doc); the image border and the padding are not outline."""
    tissue = (coarse > AIR_HU) & field_
    opened = ndimage.binary_opening(tissue, structure=_PLANE) if min(tissue.shape[1:]) >= 3 else tissue
    core = _largest(opened)
    if core.sum() * voxel_mm3 < MIN_BODY_ML * 1000.0:  # a speck or a cable is not a body
        return np.zeros_like(core)
    body = _fill_between(core)
    body = ndimage.binary_fill_holes(body, structure=_PLANE) & field_
    body &= ~_open_gas(coarse, core, body)
    return body | _lung_cut_by_edge(coarse, field_, body)


def _open_gas(coarse: np.ndarray, core: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Per slice, the gas pockets the row / column fill closed into ``body`` that open to the outside (the image
    border or the air around the body) and are mostly pure gas: ambient air between the breasts or in a fold of
    skin, which a lung (parenchyma above `GAS_HU`) cut off by a gated image's edge never is."""
    pocket = body & ~core & (coarse <= AIR_HU)
    lab, n = ndimage.label(pocket, structure=_PLANE)
    if n == 0:
        return pocket
    outside = ndimage.binary_dilation(~body, structure=_PLANE, border_value=1)
    touches = np.bincount(lab[outside & pocket], minlength=n + 1) > 0
    gas = np.bincount(lab[pocket & (coarse < GAS_HU)], minlength=n + 1)
    size = np.bincount(lab[pocket], minlength=n + 1)
    lut = touches & (gas >= GAS_SHARE * size)
    lut[0] = False  # not a pocket
    return lut[lab]


def _lung_cut_by_edge(coarse: np.ndarray, field_: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Air the fill left outside although it is lung: 3D components of air blocks outside ``body`` that touch the
    image border, border the body, are mostly not pure gas and lie in part (`HULL_SHARE`) inside the body's
    convex hull on their slices. A gated image can cut a lung off at a corner (its row and its column both end
    in lung), and then neither fill reaches it; the chest wall and mediastinum wrap around it, so much of it lies
    in the body's hull. Air outside a body lies beyond its convex skin (outside a real phantom it averaged -800 HU
    over a block, so the gas share alone does not tell), and so does the table's foam under it."""
    edge = np.zeros_like(body)
    edge[:, [0, -1], :] = True
    edge[:, :, [0, -1]] = True
    air = (coarse <= AIR_HU) & field_ & ~body
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(body)
    touches_edge = np.bincount(lab[edge & air], minlength=n + 1) > 0
    touches_body = np.bincount(lab[ndimage.binary_dilation(body, structure=_PLANE) & air], minlength=n + 1) > 0
    gas = np.bincount(lab[air & (coarse < GAS_HU)], minlength=n + 1)
    size = np.bincount(lab[air], minlength=n + 1)
    maybe = touches_edge & touches_body & (gas < GAS_SHARE * size)
    maybe[0] = False
    if not maybe.any():
        return np.zeros_like(body)
    inside = np.zeros(n + 1)
    for k in np.flatnonzero(maybe[lab].any(axis=(1, 2))):
        here = maybe[lab[k]]
        inside += np.bincount(lab[k][here], weights=_in_hull(body[k], here), minlength=n + 1)
    lut = maybe & (inside >= HULL_SHARE * size)
    return lut[lab]


def _in_hull(mask: np.ndarray, where: np.ndarray) -> np.ndarray:
    """For the pixels of ``where``: 1.0 inside the convex hull of ``mask``'s pixels (half a pixel of slack), else 0."""
    points = np.argwhere(mask)
    if len(points) < 3 or np.linalg.matrix_rank(points - points[0]) < 2:
        return np.zeros(int(where.sum()))
    hull = ConvexHull(points)
    query = np.argwhere(where)
    return ((query @ hull.equations[:, :2].T + hull.equations[:, 2]) <= 0.5).all(axis=1).astype(np.float64)


def _find_lungs(coarse: np.ndarray, body: np.ndarray, voxel_mm3: float, spacing_yx: float) -> np.ndarray:
    """Large, thick, not purely gaseous air components inside the body (see module doc). The volume counts only
    the component's core (its in-plane opening): a thin film of air under the back or in a cushion has none."""
    wall = max(1, int(round(WALL_MM / spacing_yx)))
    inner = ndimage.binary_erosion(body, structure=_PLANE, iterations=wall, border_value=1)
    air = (coarse <= AIR_HU) & inner
    lab, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    idx = np.arange(1, n + 1)
    core = ndimage.binary_opening(air, structure=_PLANE) if min(air.shape[1:]) >= 3 else air
    vol = np.bincount(lab[core], minlength=n + 1)[1:] * voxel_mm3
    big = vol >= MIN_LUNG_ML * 1000.0
    for i in idx[big]:  # the few large ones only
        big[i - 1] = float(np.mean(coarse[lab == i] < GAS_HU)) < GAS_SHARE
    if not big.any():
        return np.zeros_like(air)
    keep = big & (vol >= 0.1 * vol[big].max())
    lut = np.concatenate([[False], keep])
    return lut[lab]


def _extent_mm(sl: tuple[slice, ...], spacing: tuple[float, float, float]) -> np.ndarray:
    return np.array([(s.stop - s.start) * d for s, d in zip(sl, spacing)])


def _dense_components(coarse: np.ndarray, body: np.ndarray, dz: float) -> tuple[np.ndarray, int]:
    """26-connected components of the dense blocks, joined across gaps along z of up to `DISC_GAP_MM` (the
    vertebrae are separate dense pieces between their discs); labels only on dense blocks."""
    dense = (coarse >= DENSE_HU) & body
    n_iter = max(1, int(round(DISC_GAP_MM / 2.0 / dz)))
    joined = dense
    if dense.shape[0] > 2:
        joined = dense | ndimage.binary_closing(dense, structure=np.ones((3, 1, 1), dtype=bool), iterations=n_iter)
    lab, n = ndimage.label(joined, structure=np.ones((3, 3, 3), dtype=bool))
    lab[~dense] = 0
    return lab, n


def _size_bone(lab: np.ndarray, n: int, spacing: tuple[float, float, float]) -> np.ndarray:
    """Lookup (n + 1,) of the dense components that are large and long (spine, sternum, ribs)."""
    voxel = spacing[0] * spacing[1] * spacing[2]
    vol = np.bincount(lab.ravel(), minlength=n + 1) * voxel
    z_needed = min(BONE_MIN_Z_MM, 0.8 * lab.shape[0] * spacing[0])
    lut = np.zeros(n + 1, dtype=bool)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or vol[i] < BONE_MIN_MM3:
            continue
        ext = _extent_mm(sl, spacing)
        lut[i] = ext.max() >= BONE_MIN_EXTENT_MM or ext[0] >= z_needed
    return lut


def _midline(lungs: np.ndarray) -> float:
    """The column half-way between the outermost lung columns (the lungs lie on either side of it)."""
    cols = np.flatnonzero(lungs.any(axis=(0, 1)))
    return 0.5 * (cols[0] + cols[-1])


def _between_lungs(lungs: np.ndarray, body: np.ndarray, mid: float) -> np.ndarray:
    """Per row: the blocks between a first lung block right of the midline and a last one left of it."""
    nx = lungs.shape[2]
    has = lungs.any(axis=2)
    first = np.where(has, lungs.argmax(axis=2), nx)
    last = np.where(has, nx - 1 - lungs[:, :, ::-1].argmax(axis=2), -1)
    ok = has & (first < mid) & (last > mid)
    x = np.arange(nx)
    between = ok[..., None] & (x >= first[..., None]) & (x <= last[..., None])
    return between & ~lungs & body


def _cut_behind_spine(region: np.ndarray, bone: np.ndarray, lungs: np.ndarray, mid: float, px_mm: float) -> None:
    """Per slice, drop the rows from the front of the spine back: bone in the central columns, behind the
    lungs' mean row (the sternum is in front of it)."""
    half = max(1, int(round(15.0 / px_mm)))
    lo, hi = max(0, int(mid) - half), int(mid) + half + 1
    central = bone[:, :, lo:hi].any(axis=2)  # (Z, Y)
    rows = np.arange(region.shape[1])
    for k in range(region.shape[0]):
        lung_rows = np.flatnonzero(lungs[k].any(axis=1))
        if lung_rows.size == 0:
            continue
        spine = np.flatnonzero(central[k] & (rows > lung_rows.mean()))
        if spine.size:
            region[k, spine[0]:] = False


def _keep_largest_per_slice(region: np.ndarray) -> np.ndarray:
    out = np.zeros_like(region)
    for k in np.flatnonzero(region.any(axis=(1, 2))):
        out[k] = _largest(region[k])
    return out


def _heart_centre(heart: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, float, np.ndarray]:
    """Centre (z, y, x) in coarse-grid indices (area^2-weighted slice centroids), radius in mm, slice areas."""
    area = heart.sum(axis=(1, 2)).astype(np.float64)
    ks = np.flatnonzero(area)
    cents = np.array([np.argwhere(heart[k]).mean(axis=0) for k in ks])
    w = area[ks] ** 2
    centre = np.array([(ks * w).sum() / w.sum(), *(cents * w[:, None]).sum(axis=0) / w.sum()])
    a90 = float(np.percentile(area[ks], 90)) * spacing[1] * spacing[2]
    return centre, float(np.sqrt(a90 / np.pi)), area


def _behind_lung(lungs: np.ndarray, heart: np.ndarray, centre: np.ndarray, area: np.ndarray,
                 spacing: tuple[float, float, float]) -> np.ndarray:
    """Per slice, the blocks farther from the heart-region centre than the first lung block in their sector."""
    nz, ny, nx = lungs.shape
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    n_sec = int(round(360.0 / SECTOR_DEG))
    out = np.zeros_like(lungs)
    big = area >= 0.25 * area.max()
    for k in np.flatnonzero(lungs.any(axis=(1, 2))):
        cy, cx = np.argwhere(heart[k]).mean(axis=0) if big[k] else centre[1:]
        dy, dx = (yy - cy) * spacing[1], (xx - cx) * spacing[2]
        r = np.hypot(dy, dx)
        sec = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * n_sec).astype(np.int64) % n_sec
        first = np.full(n_sec, np.inf)
        np.minimum.at(first, sec[lungs[k]], r[lungs[k]])
        out[k] = r > first[sec] + spacing[1]
    return out


def _find_heart(lungs, body, bone, spacing) -> np.ndarray:
    mid = _midline(lungs)
    grown = ndimage.binary_dilation(bone, structure=_PLANE)
    region = _between_lungs(lungs, body, mid) & ~grown
    _cut_behind_spine(region, bone, lungs, mid, spacing[2])
    return _keep_largest_per_slice(region)


def _behind_bone(lab: np.ndarray, n: int, behind: np.ndarray) -> np.ndarray:
    """Lookup (n + 1,) of the dense components lying mostly behind lung."""
    total = np.bincount(lab.ravel(), minlength=n + 1)
    back = np.bincount(lab[behind], minlength=n + 1)
    lut = back >= BEHIND_SHARE * np.maximum(total, 1)
    lut[0] = False
    return lut


def _notes(found: dict[str, bool], nz: int) -> list[str]:
    notes = []
    if not found["body"]:
        notes.append(f"no body found (no object of >= {MIN_BODY_ML:g} mL above -500 HU): body_depth_mm = 100")
    if not found["lungs"]:
        notes.append(f"no lungs found (no air-density region >= {MIN_LUNG_ML:g} mL inside the body, not pure gas): "
                     "lung_distance_mm = 100, behind_lung = 0")
    elif not found["both_lungs"]:
        notes.append("lung on one side only: the heart region needs lungs on both sides")
    if not found["heart"]:
        notes.append("no heart / mediastinum region (no soft tissue between two lungs): heart_depth_mm, heart_dx, "
                     "heart_dy, heart_dz = 0, behind_lung = 0; bone by size and extent only")
    if not found["bone"]:
        notes.append("no bone found (no large, long structure >= 130 HU): bone_distance_mm = 100, in_bone = 0")
    if nz < 3:
        notes.append(f"only {nz} slice(s): 3D extents are those of the crop, bone is judged by in-plane size")
    return notes


def _coverage_notes(body: np.ndarray, heart: np.ndarray, dz: float) -> list[str]:
    """Notes on slices without body, and on a heart region too short along z to be a heart (last)."""
    notes = []
    nz = body.shape[0]
    empty = int((~body.any(axis=(1, 2))).sum())
    if 0 < empty < nz:
        notes.append(f"no body on {empty} of {nz} slices (air only, or beyond the object)")
    ks = np.flatnonzero(heart.any(axis=(1, 2)))
    if ks.size:
        extent, needed = (ks[-1] - ks[0] + 1) * dz, min(HEART_MIN_Z_MM, 0.8 * nz * dz)
        if extent < needed:
            notes.append(f"heart region between the lungs spans only {extent:g} mm along z (< {needed:g} mm): "
                         "taken for lung bases or apices, not a heart")
    return notes


def find_anatomy(hu: np.ndarray, spacing) -> Anatomy:
    """Body, lungs, bone and the heart / mediastinum region of a (Z, Y, X) HU volume (see the module doc).

    Never raises for a scan without some of them (``found`` and ``notes`` say which); `InputError` only for an
    array that is not 3D or a spacing that is not three positive numbers.
    """
    hu, sp = _check(hu, spacing)
    f = int(max(np.ceil(TARGET_PIXEL_MM / min(sp[1], sp[2])), np.ceil(max(hu.shape[1:]) / MAX_BLOCKS)))
    f = max(1, min(f, hu.shape[1], hu.shape[2]))
    csp = (sp[0], sp[1] * f, sp[2] * f)
    coarse = _block_mean(hu, f)
    # A block next to padding mixes the two: not field either, so the reconstruction circle is no outline.
    field_ = ndimage.binary_erosion(coarse >= PADDING_HU, structure=_PLANE, border_value=1)
    body = _find_body(coarse, field_, csp[0] * csp[1] * csp[2])
    lungs = _find_lungs(coarse, body, csp[0] * csp[1] * csp[2], min(csp[1], csp[2]))
    lab, n = _dense_components(coarse, body, sp[0])
    lut = _size_bone(lab, n, csp)
    found = {"body": bool(body.any()), "lungs": bool(lungs.any())}
    found["both_lungs"] = found["lungs"] and _both_sides(lungs)
    heart = _find_heart(lungs, body, lut[lab], csp) if found["both_lungs"] else np.zeros_like(body)
    extra = _coverage_notes(body, heart, csp[0])
    if extra and extra[-1].startswith("heart region"):
        heart[:] = False  # between the lung bases or apices only: not a heart
    found["heart"] = bool(heart.any())
    centre, radius = np.zeros(3), 0.0
    behind = np.zeros_like(body)
    if found["heart"]:
        centre, radius, area = _heart_centre(heart, csp)
        behind = _behind_lung(lungs, heart, centre, area, csp)
        lut |= _behind_bone(lab, n, behind)
    bone = lut[lab]
    found["bone"] = bool(bone.any())
    centre_mm = (centre[0] * sp[0], (centre[1] * f + (f - 1) / 2) * sp[1], (centre[2] * f + (f - 1) / 2) * sp[2])
    return Anatomy(f, csp, tuple(hu.shape), field_, body, lungs, bone, heart, behind,
                   tuple(float(c) for c in centre_mm), radius, found, _notes(found, hu.shape[0]) + extra)


def _both_sides(lungs: np.ndarray) -> bool:
    """Lung on both sides of the midline on some slice, each side with at least a fifth of the other's area."""
    mid = _midline(lungs)
    x = np.arange(lungs.shape[2])
    right = (lungs & (x < mid)).sum(axis=(1, 2))
    left = (lungs & (x > mid)).sum(axis=(1, 2))
    return bool(((right > 0) & (left > 0) & (np.minimum(right, left) >= 0.2 * np.maximum(right, left))).any())


_FLAT_Z = 1e4  # z scale (mm per slice) that keeps a nearest-point search within each slice


def _edge(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The mask's voxels with a neighbour outside it (the array border does not count)."""
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=1)


def _nearest_mm(mask: np.ndarray, where: np.ndarray, sampling: tuple[float, float, float],
                plane: bool = False) -> np.ndarray:
    """Distance (mm, capped at CAP_MM) from the blocks ``where`` (k, 3 indices) to the nearest ``mask`` block:
    0 inside the mask, CAP_MM when there is none; in-plane only (on the same slice) when ``plane``."""
    edge = np.argwhere(_edge(mask, _PLANE if plane else None))
    if edge.size == 0:
        return np.full(len(where), CAP_MM)
    scale = np.array([_FLAT_Z if plane else sampling[0], sampling[1], sampling[2]])
    dist = np.zeros(len(where))
    out = ~mask[tuple(where.T)]
    if out.any():
        d, _ = cKDTree(edge * scale).query(where[out] * scale, distance_upper_bound=CAP_MM)
        dist[out] = np.minimum(d, CAP_MM)
    return dist


def _coarse_index(a: Anatomy, flat_full: np.ndarray) -> np.ndarray:
    nz, ny, nx = a.shape
    yc, xc = a.body.shape[1:]
    z, yx = np.divmod(flat_full, ny * nx)
    y, x = np.divmod(yx, nx)
    return (z * yc + y // a.factor) * xc + x // a.factor


def anatomy_features(anatomy: Anatomy, lesions, spacing) -> np.ndarray:
    """(n, len(ANATOMY_FEATURES)) float64 anatomy features of candidate lesions (`Lesion` with ``voxels`` and
    ``centroid_zyx`` on the volume `find_anatomy` saw); every value finite (see `ANATOMY_FEATURES`)."""
    a = anatomy
    _, sp = _check(np.zeros((1, 1, 1)), spacing)
    out = np.zeros((len(lesions), len(ANATOMY_FEATURES)), dtype=np.float64)
    if not len(lesions):
        return out
    size = int(np.prod(a.shape))
    if any(getattr(les, "voxels", None) is None for les in lesions):
        raise InputError("lesions", "every candidate needs its voxel indices (find_lesions fills Lesion.voxels)")
    vox = [np.asarray(les.voxels, dtype=np.int64).ravel() for les in lesions]
    if any(v.size == 0 or v.min() < 0 or v.max() >= size for v in vox):
        raise InputError("lesions", f"voxel indices must be non-empty and inside the volume of shape {a.shape}")
    vox = [v[:: -(-v.size // MAX_SAMPLES)] for v in vox]
    counts = np.array([v.size for v in vox])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx = _coarse_index(a, np.concatenate(vox))
    cent = np.array([les.centroid_zyx for les in lesions], dtype=np.float64)
    cz = np.clip(np.rint(cent[:, 0]), 0, a.shape[0] - 1).astype(np.int64)
    cy = np.clip(np.rint(cent[:, 1]), 0, a.shape[1] - 1).astype(np.int64)
    cx = np.clip(np.rint(cent[:, 2]), 0, a.shape[2] - 1).astype(np.int64)
    cidx = _coarse_index(a, (cz * a.shape[1] + cy) * a.shape[2] + cx)
    blocks, inverse = np.unique(idx, return_inverse=True)  # distances once per block
    bzyx = np.column_stack(np.unravel_index(blocks, a.body.shape))
    czyx = np.column_stack(np.unravel_index(cidx, a.body.shape))
    lung = _nearest_mm(a.lungs, bzyx, a.spacing)[inverse]
    bone = _nearest_mm(a.bone, bzyx, a.spacing)[inverse]
    outside = a.field & ~a.body
    # A speck of bone marrow or a rib tip above 130 HU whose block averages below it still touches a bone block.
    reach = ndimage.binary_dilation(a.bone, structure=_PLANE) if a.found["bone"] else a.bone
    cols = {
        "lung_distance_mm": np.minimum.reduceat(lung, starts),
        "bone_distance_mm": np.minimum.reduceat(bone, starts),
        "in_bone": np.add.reduceat(reach.ravel()[idx].astype(np.float64), starts) / counts >= 0.5,
        "behind_lung": np.add.reduceat(a.behind_lung.ravel()[idx].astype(np.float64), starts) / counts,
        # the candidate's nearest approach to the outline, not its centroid's: a ring of skin has its centroid deep
        "body_depth_mm": np.minimum.reduceat(_nearest_mm(outside, bzyx, a.spacing, plane=True)[inverse], starts),
    }
    if a.found["heart"]:
        depth = _nearest_mm(_edge(a.heart, _PLANE), czyx, a.spacing, plane=True)
        cols["heart_depth_mm"] = np.where(a.heart.ravel()[cidx], depth, -depth)
    if a.found["heart"] and a.heart_radius_mm > 0:
        rel = (cent * np.array(sp) - np.array(a.heart_centre_mm)) / a.heart_radius_mm
        rel = np.clip(rel, -HEART_REL_CAP, HEART_REL_CAP)
        cols.update(heart_dz=rel[:, 0], heart_dy=rel[:, 1], heart_dx=rel[:, 2])
    for j, name in enumerate(ANATOMY_FEATURES):
        if name in cols:
            out[:, j] = cols[name]
    return np.nan_to_num(out, nan=0.0, posinf=CAP_MM, neginf=-CAP_MM)
