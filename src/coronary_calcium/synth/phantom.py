"""Synthetic non-contrast chest CT with coronary calcium and exact ground truth.

`generate_patient(config, index)` draws one patient from ``np.random.default_rng([config.seed, index])``:
anatomy as a tissue-class volume (body wall, lungs with vessels, mediastinum, a tilted heart in its epicardial fat
with four coronary arteries on its surface, great vessels, airways, liver dome, spine, ribs, sternum), calcium
plaques (coronary, aortic wall, aortic valve / mitral annulus), then HU = tissue HU + noise, blurred in-plane by
the reconstruction kernel (which also colours the noise), clipped and rounded to the integers DICOM stores.

Ground truth is defined on that final image: the label of a voxel is its plaque's label where the plaque
dominates the voxel and the final HU is >= 130. Coordinates are LPS millimetres (x to the patient's left,
y posterior, z superior); arrays are indexed [z, y, x] with slice 0 the most inferior (see `CTVolume`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from coronary_calcium.errors import InputError
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import AORTIC, CORONARY_LABELS, LABEL_NAMES, LAD, LCX, LM, RCA, VALVE
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions, score_scan
from coronary_calcium.synth.config import CATEGORY_BOUNDS, CATEGORY_LABELS, SynthConfig
from coronary_calcium.synth.grid import Grid

# The truth follows the scoring module's default rules (120 kVp): one source of the Agatston rules.
SCORING = ScoringConfig()
CALCIUM_THRESHOLD_HU = SCORING.threshold
MIN_LESION_AREA_MM2 = SCORING.min_area_mm2
# A plaque claims a voxel where it adds at least this much HU (after blur) and more than any other plaque.
PLAQUE_REGION_HU = 10.0
# Noise specks >= 130 HU in the heart region of at least this area are flattened (see _despeckle); a bit
# below 1 mm^2 so that rounding in a reader's area sum cannot bring one back.
DESPECKLE_AREA_MM2 = 0.9
HU_MIN, HU_MAX = -1024.0, 3071.0

# --- tissue classes ----------------------------------------------------------------------------------------
(
    AIR, TABLE_SHELL, TABLE_CORE, SKIN, SUBCUTANEOUS_FAT, MUSCLE, LUNG, LUNG_VESSEL, MEDIASTINAL_FAT,
    EPICARDIAL_FAT, PERICARDIUM, MYOCARDIUM, BLOOD, CORONARY_WALL, ESOPHAGUS, AIRWAY, AIRWAY_WALL, LIVER,
    STOMACH, CORTICAL_BONE, CANCELLOUS_BONE, DISC, CSF, CARTILAGE,
) = range(24)
TISSUE_NAMES = {
    AIR: "air", TABLE_SHELL: "table shell", TABLE_CORE: "table core", SKIN: "skin",
    SUBCUTANEOUS_FAT: "subcutaneous fat", MUSCLE: "muscle", LUNG: "lung", LUNG_VESSEL: "lung vessel",
    MEDIASTINAL_FAT: "mediastinal fat", EPICARDIAL_FAT: "epicardial fat", PERICARDIUM: "pericardium",
    MYOCARDIUM: "myocardium", BLOOD: "blood", CORONARY_WALL: "coronary artery", ESOPHAGUS: "esophagus",
    AIRWAY: "airway lumen", AIRWAY_WALL: "airway wall", LIVER: "liver", STOMACH: "stomach / spleen",
    CORTICAL_BONE: "cortical bone", CANCELLOUS_BONE: "cancellous bone", DISC: "intervertebral disc",
    CSF: "spinal canal", CARTILAGE: "costal cartilage",
}
# Noise-free HU per tissue, drawn per patient from these ranges (non-contrast, 120 kVp). Blood is drawn as the
# myocardium's HU plus 1-5 HU: without contrast the two differ by a few HU only.
TISSUE_HU_RANGES: dict[int, tuple[float, float]] = {
    AIR: (-1000.0, -1000.0), TABLE_SHELL: (150.0, 250.0), TABLE_CORE: (-800.0, -600.0), SKIN: (20.0, 60.0),
    SUBCUTANEOUS_FAT: (-115.0, -85.0), MUSCLE: (40.0, 60.0), LUNG: (-880.0, -820.0), LUNG_VESSEL: (30.0, 45.0),
    MEDIASTINAL_FAT: (-110.0, -80.0), EPICARDIAL_FAT: (-110.0, -85.0), PERICARDIUM: (15.0, 35.0),
    MYOCARDIUM: (35.0, 42.0), BLOOD: (36.0, 47.0), CORONARY_WALL: (35.0, 45.0), ESOPHAGUS: (30.0, 45.0),
    AIRWAY: (-1000.0, -980.0), AIRWAY_WALL: (20.0, 40.0), LIVER: (50.0, 65.0), STOMACH: (30.0, 45.0),
    CORTICAL_BONE: (700.0, 1500.0), CANCELLOUS_BONE: (150.0, 300.0), DISC: (70.0, 100.0), CSF: (5.0, 15.0),
    CARTILAGE: (80.0, 120.0),
}
BONE_TISSUES = (CORTICAL_BONE, CANCELLOUS_BONE)
_LUNGLIKE = (LUNG, LUNG_VESSEL)


@dataclass
class Plaque:
    """One calcification: a smooth ellipsoidal blob, density ``density_hu`` above the tissue at its core.

    ``axes`` rows are unit vectors (for coronary plaques: along the vessel, radial, circumferential) with the
    FWHM of the profile along each in ``fwhm_mm``. ``estimated_agatston`` is the noise-free estimate used to
    draw the burden; the truth JSON reports what the final image measures.
    """

    label: int
    centre_mm: np.ndarray
    axes: np.ndarray
    fwhm_mm: np.ndarray
    density_hu: float
    estimated_agatston: float = 0.0
    box: tuple[slice, slice, slice] | None = field(default=None, repr=False)
    patch: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": int(self.label),
            "kind": LABEL_NAMES[self.label],
            "centre_mm": [round(float(v), 3) for v in self.centre_mm],
            "axes": [[round(float(v), 4) for v in row] for row in self.axes],
            "fwhm_mm": [round(float(v), 3) for v in self.fwhm_mm],
            "density_hu": round(float(self.density_hu), 1),
            "estimated_agatston": round(float(self.estimated_agatston), 3),
        }


@dataclass
class SyntheticPatient:
    """One generated scan with its exact ground truth.

    volume: the CT (HU are integers in [-1024, 3071], as stored in DICOM with intercept -1024).
    labels: uint8 (Z, Y, X); calcium voxels only (>= 130 HU): 1 LM, 2 LAD, 3 LCX, 4 RCA, 5 aortic, 6 valve.
    heart_region: bool (Z, Y, X); the pericardial sac dilated by 5 mm plus the coronary arteries and aortic root.
    truth: JSON-ready dict (scores, lesions, positive slices, generation parameters).
    tissue: uint8 (Z, Y, X) tissue classes before blur and noise (see TISSUE_NAMES).
    """

    patient_id: str
    volume: CTVolume
    labels: np.ndarray
    heart_region: np.ndarray
    truth: dict[str, Any]
    tissue: np.ndarray
    plaques: list[Plaque] = field(default_factory=list)

    @property
    def bone(self) -> np.ndarray:
        """Bool mask of bone (cortical and cancellous) before blur."""
        return np.isin(self.tissue, BONE_TISSUES)

    @property
    def positive_slices(self) -> list[int]:
        """Slices holding a 2D component (8-connected) of coronary calcium of at least 1 mm^2."""
        return list(self.truth["positive_slices"])


def patient_id(index: int) -> str:
    """Patient ID of the ``index``-th synthetic patient."""
    return f"SYN{index:04d}"


# --- geometric primitives (on the shared voxel grid, synth/grid.py) ---------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class _Ellipsoid:
    centre: np.ndarray
    rot: np.ndarray  # columns: the ellipsoid's axes in LPS
    semi: np.ndarray

    def extent(self, scale: float = 1.0) -> np.ndarray:
        """Half extent along x, y, z of the ellipsoid scaled by ``scale``."""
        return scale * np.sqrt(((self.rot * self.semi[None, :]) ** 2).sum(axis=1))

    def box(self, grid: Grid, scale: float = 1.0) -> tuple[slice, slice, slice] | None:
        e = self.extent(scale)
        return grid.box(self.centre - e, self.centre + e)

    def q(self, grid: Grid, box: tuple[slice, slice, slice]) -> np.ndarray:
        """Quadratic form (1 on the surface) on a box, float32 (Z, Y, X); built from 2D terms for speed."""
        m = self.rot @ np.diag(1.0 / self.semi**2) @ self.rot.T
        x, y, z = grid.coords(box)
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        p2 = (m[0, 0] * dx**2)[None, :] + (m[1, 1] * dy**2)[:, None] + 2 * m[0, 1] * dy[:, None] * dx[None, :]
        l2 = (2 * m[0, 2] * dx)[None, :] + (2 * m[1, 2] * dy)[:, None]
        q = dz.astype(np.float32)[:, None, None] * l2.astype(np.float32)[None]
        q += p2.astype(np.float32)[None]
        q += (m[2, 2] * dz**2).astype(np.float32)[:, None, None]
        return q


def _capsule_dist2(
    grid: Grid, a: np.ndarray, b: np.ndarray, r: float
) -> tuple[tuple[slice, slice, slice] | None, np.ndarray | None]:
    """Squared distance (mm^2, float32) from segment a-b on the segment's box widened by r."""
    box = grid.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
    if box is None:
        return None, None
    x, y, z = grid.coords(box)
    d = b - a
    l2 = float(d @ d) or 1e-9
    px = (x - a[0]).astype(np.float32)[None, None, :]
    py = (y - a[1]).astype(np.float32)[None, :, None]
    pz = (z - a[2]).astype(np.float32)[:, None, None]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / l2, 0.0, 1.0).astype(np.float32)
    dist2 = (px - t * d[0]) ** 2
    dist2 += (py - t * d[1]) ** 2
    dist2 += (pz - t * d[2]) ** 2
    return box, dist2


def _sphere_voxels(grid: Grid, pts: np.ndarray, radii: np.ndarray, chunk: int = 2_000_000) -> np.ndarray:
    """Flat indices of voxel centres within radii[j] of pts[j] for some j (a swept tube), possibly repeated."""
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    kz = (pts[:, 2] - grid.z0) / grid.dz
    kr = radii / grid.dz
    k0 = np.maximum(np.ceil(kz - kr), 0).astype(np.int64)
    k1 = np.minimum(np.floor(kz + kr), grid.nz - 1).astype(np.int64)
    cnt = np.maximum(k1 - k0 + 1, 0)
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    j = np.repeat(np.arange(len(pts)), cnt)
    k = k0[j] + (np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    rho2 = (radii[j] ** 2 - (grid.z0 + k * grid.dz - pts[j, 2]) ** 2).astype(np.float32)
    cx = (pts[j, 0] - grid.x0) / grid.ps
    cy = (pts[j, 1] - grid.y0) / grid.ps
    rad = int(math.ceil(float(radii.max()) / grid.ps)) + 1
    oy, ox = np.mgrid[-rad : rad + 1, -rad : rad + 1]
    keep = ox**2 + oy**2 <= (rad + 0.5) ** 2
    ox, oy = ox[keep].astype(np.int64), oy[keep].astype(np.int64)
    out = []
    step = max(1, chunk // len(ox))
    for s in range(0, total, step):
        sl = slice(s, s + step)
        bx, by = np.rint(cx[sl]).astype(np.int64), np.rint(cy[sl]).astype(np.int64)
        ix = bx[:, None] + ox[None, :]
        iy = by[:, None] + oy[None, :]
        d2 = ((ix - cx[sl, None]) ** 2 + (iy - cy[sl, None]) ** 2).astype(np.float32) * np.float32(grid.ps**2)
        m = (d2 <= rho2[sl, None]) & (ix >= 0) & (ix < grid.nx) & (iy >= 0) & (iy < grid.ny)
        out.append(((k[sl, None] * grid.ny + iy) * grid.nx + ix)[m])
    return np.concatenate(out)


def _resample_polyline(pts: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` mm of arc length along a polyline."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate(([0.0], np.cumsum(seg)))
    n = max(2, int(s[-1] / step) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, i]) for i in range(3)], axis=1)


def _psf_kernel(fwhm_mm: float, ps: float) -> np.ndarray:
    sigma = fwhm_mm / 2.3548 / ps
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur2d(a: np.ndarray, w: np.ndarray, mode: str = "nearest") -> np.ndarray:
    return ndi.correlate1d(ndi.correlate1d(a, w, axis=-1, mode=mode), w, axis=-2, mode=mode)


# --- anatomy ------------------------------------------------------------------------------------------------
@dataclass
class _Artery:
    label: int
    pts: np.ndarray  # (N, 3) every 0.5 mm
    radius: np.ndarray  # (N,)
    ostial_mm: float = 0.0  # length of its segment from the aortic root to the heart's surface (LM: all of it)

    @property
    def tangent(self) -> np.ndarray:
        t = np.gradient(self.pts, axis=0)
        return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)


@dataclass
class _Anatomy:
    """Everything drawn about one patient's anatomy and acquisition (mm, LPS)."""

    hu: np.ndarray  # (n_tissues,) float32 lookup
    body: tuple[float, float]
    skin: float
    fat: float
    cavity: tuple[float, float, float]  # A_c, B_c, y_c
    rib_thickness: float
    spine: dict[str, float]
    sternum: dict[str, float]
    ribs: dict[str, float]
    ventricles: _Ellipsoid
    atria: _Ellipsoid
    lv: _Ellipsoid
    rv: _Ellipsoid
    liver: _Ellipsoid
    stomach: _Ellipsoid
    gas: _Ellipsoid | None
    s_peri: float  # pericardium (inner) scale of the heart ellipsoids
    s_peri_line: float
    s_region: float
    s_mediastinum: float
    epicardial_fat: float
    coronary_fat_mm: float  # fat between a coronary artery's wall and the myocardium or lung it runs along
    root: np.ndarray
    root_r: float
    asc_top: np.ndarray
    asc_r: float
    desc: tuple[np.ndarray, np.ndarray, float]
    esophagus: tuple[np.ndarray, np.ndarray, float, float]
    svc: tuple[np.ndarray, np.ndarray, float]
    pa: list[tuple[np.ndarray, np.ndarray, float]]
    airways: list[tuple[np.ndarray, np.ndarray, float]]
    lung_vessels: tuple[np.ndarray, np.ndarray]
    arteries: list[_Artery]
    angles_deg: tuple[float, float, float]
    body_scale: float
    heart_scale: float


def _draw_hu(rng: np.random.Generator) -> np.ndarray:
    hu = np.zeros(len(TISSUE_NAMES), dtype=np.float32)
    for t in range(len(TISSUE_NAMES)):
        lo, hi = TISSUE_HU_RANGES[t]
        hu[t] = rng.uniform(lo, hi)
    hu[BLOOD] = min(hu[MYOCARDIUM] + rng.uniform(1.0, 5.0), TISSUE_HU_RANGES[BLOOD][1])
    return np.round(hu, 1)


def _heart_frame(rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Rotation whose columns are e1 (base -> apex: anterior-left-inferior), e2 (anterior), e3 = e1 x e2."""
    az = rng.uniform(35.0, 60.0)  # from anterior towards the left
    el = rng.uniform(20.0, 40.0)  # below the axial plane
    roll = rng.uniform(-20.0, 20.0)
    a, e, r = np.radians([az, el, roll])
    e1 = np.array([math.sin(a) * math.cos(e), -math.cos(a) * math.cos(e), -math.sin(e)])
    ant = np.array([0.0, -1.0, 0.0])
    e2 = _unit(ant - (ant @ e1) * e1)
    e3 = np.cross(e1, e2)
    e2, e3 = math.cos(r) * e2 + math.sin(r) * e3, -math.sin(r) * e2 + math.cos(r) * e3
    return np.stack([e1, e2, e3], axis=1), (az, el, roll)


def _surface_point(v: _Ellipsoid, s: np.ndarray, psi: np.ndarray, offset: float) -> np.ndarray:
    """Points on the ventricles' ellipsoid grown by ``offset`` mm at long-axis position s (-1 base, 1 apex)."""
    e1, e2, e3 = v.rot[:, 0], v.rot[:, 1], v.rot[:, 2]
    a1, a2, a3 = v.semi + offset
    c = np.sqrt(np.clip(1.0 - s**2, 0.0, 1.0))
    return (
        v.centre[None, :]
        + (a1 * s)[:, None] * e1[None, :]
        + (c * a2 * np.cos(psi))[:, None] * e2[None, :]
        + (c * a3 * np.sin(psi))[:, None] * e3[None, :]
    )


def _draw_arteries(
    rng: np.random.Generator, v: _Ellipsoid, root: np.ndarray, root_r: float, hs: float
) -> list[_Artery]:
    """LM, LAD, LCX, RCA as 3D curves in the epicardial fat (grooves of the ventricles' surface)."""
    n = 200
    s_av = rng.uniform(-0.6, -0.45)  # atrioventricular groove: a ring near the base
    psi_lad = math.radians(rng.uniform(295.0, 325.0))
    r_lm = rng.uniform(1.8, 2.2) * hs

    def wiggle(t: np.ndarray, amp: float) -> np.ndarray:
        return amp * np.sin(2 * math.pi * rng.uniform(1.5, 3.0) * t + rng.uniform(0, 2 * math.pi))

    t = np.linspace(0.0, 1.0, n)
    # LAD: anterior interventricular groove, base -> apex.
    s = s_av + (rng.uniform(0.9, 0.97) - s_av) * t
    # Centres sit just outside the myocardium; the fat halo painted around them carves the groove.
    lad = _surface_point(v, s, psi_lad + wiggle(t, 0.08), 0.5 * r_lm)
    # LCX: left AV groove from the bifurcation backwards.
    psi = psi_lad - 0.12 - (psi_lad - 0.12 - math.radians(rng.uniform(180.0, 215.0))) * t
    lcx = _surface_point(v, s_av + wiggle(t, 0.03), psi, 0.4 * r_lm)
    # RCA: right AV groove to the crux, then down the posterior interventricular groove.
    psi0, psi_crux = math.radians(rng.uniform(10.0, 35.0)), math.radians(rng.uniform(140.0, 165.0))
    ring = _surface_point(v, s_av + wiggle(t, 0.03), psi0 + (psi_crux - psi0) * t, 0.5 * r_lm)
    s_pda = s_av + (rng.uniform(0.4, 0.65) - s_av) * t[: n // 2]
    pda = _surface_point(v, s_pda, psi_crux - 0.15 * t[: n // 2], 0.4 * r_lm)
    bif = lad[0]

    def ostium(target: np.ndarray) -> np.ndarray:
        return root + (root_r - 1.0) * _unit(target - root)

    lm_pts = np.stack([ostium(bif) + (bif - ostium(bif)) * u for u in np.linspace(0, 1, 20)])
    rca_start = ring[0]
    rca_prox = np.stack([ostium(rca_start) + (rca_start - ostium(rca_start)) * u for u in np.linspace(0, 1, 20)])
    rca = np.concatenate([rca_prox, ring[1:], pda[1:]])
    ostial = {LM: math.inf, RCA: float(np.linalg.norm(rca_start - ostium(rca_start)))}
    out = []
    for label, pts, r0, r1 in (
        (LM, lm_pts, r_lm, r_lm * 0.95),
        (LAD, lad, r_lm * 0.9, r_lm * 0.45),
        (LCX, lcx, r_lm * 0.85, r_lm * 0.5),
        (RCA, rca, r_lm * 0.95, r_lm * 0.55),
    ):
        p = _resample_polyline(pts, 0.5)
        out.append(_Artery(label, p, np.linspace(r0, r1, len(p)), ostial.get(label, 0.0)))
    return out


def _draw_anatomy(rng: np.random.Generator, config: SynthConfig) -> _Anatomy:
    """One patient's anatomy; the steps draw from ``rng`` in a fixed order, which fixes every patient's scan."""
    hu = _draw_hu(rng)
    bs = rng.uniform(*config.body_scale)
    hs = bs * rng.uniform(0.92, 1.08)
    body = _draw_body(rng, config, bs)
    heart = _draw_heart(rng, config, bs, hs, body)
    vessels = _draw_great_vessels(rng, bs, hs, heart["ventricles"], body["spine"])
    y_c = body["cavity"][2]
    organs = _draw_diaphragm(rng, bs, y_c, heart["ventricles"], heart["s_peri_line"])
    u = rng.uniform
    # Ribs: bands around the cavity, dropping towards the front.
    ribs = dict(pitch=u(24.0, 28.0) * bs, drop=u(95.0, 130.0), half_h=u(4.5, 6.0), cortex=1.2,
                phase_l=u(0.0, 1.0), phase_r=u(0.0, 1.0), cart=u(0.72, 0.8) * math.pi)
    lung_vessels = _draw_lung_vessels(rng, bs, y_c, vessels["root"])
    arteries = _draw_arteries(rng, heart["ventricles"], vessels["root"], vessels["root_r"], hs)
    # Epicardial fat around the arteries varies between patients: in lean ones the vessel lies on the myocardium.
    coronary_fat = u(0.5, 2.5)
    return _Anatomy(hu=hu, **body, **heart, **vessels, **organs, ribs=ribs, lung_vessels=lung_vessels,
                    arteries=arteries, coronary_fat_mm=coronary_fat, body_scale=bs, heart_scale=hs)


def _draw_body(rng: np.random.Generator, config: SynthConfig, bs: float) -> dict[str, Any]:
    """Body wall (skin, subcutaneous fat, muscle, ribs), the thoracic cavity inside, spine and sternum."""
    u = rng.uniform
    a_c, b_c = 125.0 * bs * u(0.95, 1.05), 80.0 * bs * u(0.95, 1.05)
    skin, fat, rib = u(1.5, 2.5), u(*config.subcutaneous_fat_mm), u(6.0, 8.0)
    m_ant, m_lat, m_post = u(8.0, 16.0), u(10.0, 20.0), u(40.0, 55.0)
    front_wall, back_wall, lat_wall = skin + fat + m_ant + rib, skin + fat + m_post + rib, skin + fat + m_lat + rib
    body_a, body_b = a_c + lat_wall, b_c + (front_wall + back_wall) / 2
    y_c = (front_wall - back_wall) / 2
    # Spine at the back of the cavity, sternum at the front.
    r_vb = u(16.0, 21.0) * bs
    x_sp = u(-3.0, 3.0)
    y_sp = y_c + b_c - r_vb + u(2.0, 6.0)
    r_canal = u(7.0, 9.0)
    spine = dict(
        x=x_sp, y=y_sp, r=r_vb, cortex=u(1.2, 2.0), canal_y=y_sp + r_vb + r_canal + u(1.0, 2.0),
        canal_r=r_canal, arch=u(4.0, 6.0), pitch=u(24.0, 28.0) * bs, disc=u(5.0, 8.0), phase=u(0.0, 1.0),
    )
    st_a, st_b = u(14.0, 20.0), u(5.0, 7.0)
    sternum = dict(x=u(-3.0, 3.0), y=y_c - b_c - st_b + 1.5, a=st_a, b=st_b)
    return dict(body=(body_a, body_b), skin=skin, fat=fat, cavity=(a_c, b_c, y_c), rib_thickness=rib, spine=spine,
                sternum=sternum)


def _draw_heart(rng: np.random.Generator, config: SynthConfig, bs: float, hs: float,
                body: dict[str, Any]) -> dict[str, Any]:
    """Ventricles (a tilted ellipsoid) and atria at their base inside the pericardial sac, with the sac's scales."""
    u = rng.uniform
    _, b_c, y_c = body["cavity"]
    y_sp, r_vb = body["spine"]["y"], body["spine"]["r"]
    rot, angles = _heart_frame(rng)
    semi = np.array([u(56.0, 64.0), u(40.0, 46.0), u(34.0, 40.0)]) * hs
    epi = u(*config.epicardial_fat_mm) * math.sqrt(hs)
    s_peri = 1.0 + epi / semi.min()
    s_line = s_peri + 1.0 / semi.min()
    s_region = s_line + 5.0 / semi.min()
    s_med = s_line + u(0.5, 8.0) / semi.min()  # mediastinal pleura: on the pericardium in some patients
    centre = np.array([u(15.0, 30.0) * bs, 0.0, 0.0])
    probe = _Ellipsoid(centre, rot, semi)
    centre[1] = y_c - b_c + u(2.0, 12.0) + probe.extent(s_line)[1]
    ventricles = _Ellipsoid(centre.copy(), rot, semi)
    e1, e2, e3 = rot[:, 0], rot[:, 1], rot[:, 2]
    a_semi = np.array([u(38.0, 46.0), u(22.0, 28.0), u(24.0, 30.0)]) * hs
    a_centre = centre - 0.8 * semi[0] * e1 + np.array([-5.0, 18.0, 6.0]) * hs
    atria = _Ellipsoid(a_centre, np.eye(3), a_semi)
    # Keep room behind the atria for the esophagus and the descending aorta.
    overlap = atria.centre[1] + atria.extent(s_line)[1] - (y_sp - r_vb - 12.0)
    if overlap > 0:
        atria = _Ellipsoid(a_centre - np.array([0.0, min(overlap, 15.0), 0.0]), np.eye(3), a_semi)
    lv = _Ellipsoid(centre + 0.12 * semi[0] * e1 - 0.22 * semi[1] * e2 - 0.05 * semi[2] * e3, rot,
                    semi * np.array([0.72, 0.5, 0.55]))
    rv = _Ellipsoid(centre - 0.05 * semi[0] * e1 + 0.5 * semi[1] * e2 + 0.1 * semi[2] * e3, rot,
                    semi * np.array([0.62, 0.35, 0.65]))
    return dict(ventricles=ventricles, atria=atria, lv=lv, rv=rv, s_peri=s_peri, s_peri_line=s_line,
                s_region=s_region, s_mediastinum=s_med, epicardial_fat=epi, angles_deg=angles)


def _draw_great_vessels(rng: np.random.Generator, bs: float, hs: float, ventricles: _Ellipsoid,
                        spine: dict[str, float]) -> dict[str, Any]:
    """Aortic root, ascending and descending aorta, esophagus, SVC, pulmonary arteries and airways."""
    u = rng.uniform
    centre, semi, rot = ventricles.centre, ventricles.semi, ventricles.rot
    x_sp, y_sp, r_vb = spine["x"], spine["y"], spine["r"]
    root = centre - 0.78 * semi[0] * rot[:, 0] + 0.22 * semi[1] * rot[:, 1] + np.array([0.0, 0.0, 8.0]) * hs
    root_r = u(12.0, 15.0) * hs
    asc_r = root_r * u(1.0, 1.15)
    asc_top = root + np.array([u(-25.0, -10.0), u(-15.0, -5.0), 200.0])
    alpha = math.radians(u(35.0, 55.0))
    r_desc = u(11.0, 14.0) * bs
    dc = np.array([x_sp, y_sp, 0.0]) + (r_vb + r_desc + 2.0) * np.array([math.sin(alpha), -math.cos(alpha), 0.0])
    desc = (dc + np.array([u(-4, 4), u(-4, 4), -400.0]), dc + np.array([0.0, 0.0, 400.0]), r_desc)
    beta = math.radians(u(-20.0, 0.0))
    r_eso = u(7.0, 9.0)
    ec = np.array([x_sp, y_sp, 0.0]) + (r_vb + r_eso + 3.0) * np.array([math.sin(beta), -math.cos(beta), 0.0])
    esophagus = (ec - np.array([0, 0, 400.0]), ec + np.array([0, 0, 400.0]), r_eso,
                 u(1.5, 3.0) if rng.random() < 0.5 else 0.0)
    svc_c = root + np.array([-30.0 * hs, 6.0, 0.0])
    svc = (svc_c - np.array([0.0, 0.0, 15.0]), svc_c + np.array([0.0, 0.0, 300.0]), u(8.0, 11.0))
    rvot = root + np.array([18.0, -14.0, 8.0]) * hs
    pa_r = u(12.0, 15.0) * hs
    bif = rvot + np.array([12.0, 22.0, 30.0]) * hs
    pa = [(rvot, bif, pa_r), (bif, bif + np.array([-75.0, 22.0, -8.0]) * hs, 10.0 * hs),
          (bif, bif + np.array([45.0, 30.0, -6.0]) * hs, 9.5 * hs)]
    carina = np.array([x_sp, ec[1] - r_eso - u(8.0, 14.0), root[2] + u(40.0, 65.0)])
    airways = [
        (carina, carina + np.array([0.0, 0.0, 300.0]), u(8.0, 10.0)),
        (carina, carina + np.array([-45.0, 8.0, -22.0]) * bs, u(6.5, 8.0)),
        (carina, carina + np.array([50.0, 12.0, -40.0]) * bs, u(5.5, 7.0)),
    ]
    return dict(root=root, root_r=root_r, asc_top=asc_top, asc_r=asc_r, desc=desc, esophagus=esophagus, svc=svc,
                pa=pa, airways=airways)


def _draw_diaphragm(rng: np.random.Generator, bs: float, y_c: float, ventricles: _Ellipsoid,
                    s_line: float) -> dict[str, Any]:
    """Liver dome on the right, stomach / spleen (with gas in some) on the left, just below the heart."""
    u = rng.uniform
    z_low = ventricles.centre[2] - ventricles.extent(s_line)[2]
    liver_semi = np.array([100.0 * bs, 85.0 * bs, 90.0])
    liver = _Ellipsoid(np.array([-40.0 * bs, y_c + 10.0, z_low + u(-5.0, 25.0) - 90.0]), np.eye(3), liver_semi)
    st_semi = np.array([70.0 * bs, 60.0 * bs, 70.0])
    stomach = _Ellipsoid(np.array([60.0 * bs, y_c + 5.0, z_low + u(-20.0, 5.0) - 70.0]), np.eye(3), st_semi)
    gas = None
    if rng.random() < 0.6:
        gs = np.array([u(15.0, 30.0), u(10.0, 20.0), u(8.0, 15.0)])
        gas = _Ellipsoid(stomach.centre + np.array([10.0, -20.0, 70.0 - gs[2] - 3.0]), np.eye(3), gs)
    return dict(liver=liver, stomach=stomach, gas=gas)


def _draw_lung_vessels(rng: np.random.Generator, bs: float, y_c: float,
                       root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lung vessels: segments radiating from the hila, as points every ~1 mm with their radii."""
    u = rng.uniform
    hila = [np.array([-55.0 * bs, y_c + 5.0, root[2] - 15.0]), np.array([55.0 * bs, y_c + 5.0, root[2] - 20.0])]
    v_pts, v_rad = [], []
    for side, hilum in zip((-1.0, 1.0), hila):
        for _ in range(80):
            start = hilum + np.array([side * u(0.0, 60.0) * bs, u(-45.0, 45.0) * bs, u(-60.0, 50.0)])
            d = _unit(np.array([side * u(0.3, 1.0), u(-0.8, 0.8), u(-0.8, 0.8)]))
            length = u(15.0, 60.0)
            dist = abs(start[0] - hilum[0]) / (60.0 * bs)
            r0 = u(0.8, 2.8) * (1.0 - 0.6 * dist)
            n = max(2, int(length / 1.0))
            tt = np.linspace(0.0, 1.0, n)
            v_pts.append(start[None, :] + length * tt[:, None] * d[None, :])
            v_rad.append(np.maximum(r0 * (1.0 - 0.5 * tt), 0.6))
    return np.concatenate(v_pts), np.concatenate(v_rad)


def _draw_grid(rng: np.random.Generator, config: SynthConfig, an: _Anatomy) -> tuple[Grid, bool, float]:
    """Acquisition geometry: gated (FOV on the heart) or full chest; slices cover the heart plus margins."""
    gated = bool(rng.random() < config.gated_fraction)
    n = config.matrix
    if gated:
        fov = rng.uniform(*config.gated_fov_mm)
        cx = an.ventricles.centre[0] - 10.0 + rng.uniform(-10.0, 10.0)
        cy = an.ventricles.centre[1] + rng.uniform(-10.0, 10.0)
    else:
        fov = max(rng.uniform(*config.full_fov_mm), 2 * an.body[0] + 10.0)
        cx, cy = rng.uniform(-5.0, 5.0), rng.uniform(0.0, 15.0)
    ps = fov / n
    increments = config.slice_increments_mm if gated else config.full_slice_increments_mm
    dz = float(increments[int(rng.integers(len(increments)))])
    v, a = an.ventricles, an.atria
    z_lo = v.centre[2] - v.extent(an.s_peri_line)[2] - rng.uniform(2.0, 8.0)
    z_hi = max(a.centre[2] + a.extent(an.s_peri_line)[2], an.root[2] + an.root_r) + rng.uniform(3.0, 15.0)
    nz = int(np.clip(math.ceil((z_hi - z_lo) / dz), config.n_slices[0], config.n_slices[1]))
    zc = 0.5 * (z_lo + z_hi) + rng.uniform(-0.5, 0.5) * dz
    table_z = rng.uniform(-250.0, -100.0)  # scanner z of the heart centre: origins differ between patients
    grid = Grid(nz, n, n, dz, ps, cx - ps * (n - 1) / 2, cy - ps * (n - 1) / 2, zc - dz * (nz - 1) / 2)
    return grid, gated, table_z


# --- painting -------------------------------------------------------------------------------------------------
def _paint(t: np.ndarray, tissue: int, where: np.ndarray) -> None:
    np.copyto(t, np.uint8(tissue), where=where)


def _is_lung(t: np.ndarray) -> np.ndarray:
    return (t == LUNG) | (t == LUNG_VESSEL)


def _base_slice(grid: Grid, an: _Anatomy, table: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The axial cross-section shared by all slices (body wall, cavity as lung) and the rib ring's pixels."""
    x, y = grid.x, grid.y
    x2, y2 = (x**2)[None, :], (y**2)[:, None]
    a, b = an.body
    sl = np.full((grid.ny, grid.nx), AIR, dtype=np.uint8)
    if table:
        top = b + 3.0
        band = np.abs(x)[None, :] < 220.0
        for lo, hi, tis in ((top, top + 12.0, TABLE_SHELL), (top + 2.0, top + 10.0, TABLE_CORE)):
            sl[band & ((y >= lo) & (y < hi))[:, None]] = tis
    for da, tis in ((0.0, SKIN), (an.skin, SUBCUTANEOUS_FAT), (an.skin + an.fat, MUSCLE)):
        sl[x2 / (a - da) ** 2 + y2 / (b - da) ** 2 < 1.0] = tis
    a_c, b_c, y_c = an.cavity
    yy = (y - y_c)[:, None]
    rho2 = x2 / a_c**2 + yy**2 / b_c**2
    sl[rho2 < 1.0] = LUNG
    # Ring just outside the cavity where the ribs run (intercostal muscle between them).
    rho = np.sqrt(rho2)
    r = np.sqrt(x2 + yy**2)
    depth = (rho - 1.0) * r / np.maximum(rho, 1e-6)
    st, sp = an.sternum, an.spine
    ring = (depth >= 0) & (depth < an.rib_thickness)
    ring &= (np.abs(x - st["x"])[None, :] > st["a"] + 3.0) | (yy > 0)
    ring &= (np.abs(x - sp["x"])[None, :] > sp["r"] + 8.0) | (yy < 0)
    idx = np.flatnonzero(ring)
    xs = np.broadcast_to(x[None, :], ring.shape).ravel()[idx]
    ys = np.broadcast_to(yy, ring.shape).ravel()[idx]
    ring_info = dict(
        idx=idx, phi=np.arctan2(np.abs(xs), ys), left=xs > 0, depth=depth.ravel()[idx],
    )
    return sl, ring_info


def _paint_ribs(tissue: np.ndarray, grid: Grid, an: _Anatomy, ring: dict[str, np.ndarray]) -> None:
    rb = an.ribs
    # Height drop from the back (phi = 0) to the front (phi = pi); nearly linear so that each rib crosses a
    # slice as a short oblique segment, as on real axial images.
    g = 0.75 * ring["phi"] / math.pi + 0.25 * (1.0 - np.cos(ring["phi"])) / 2.0
    phase = np.where(ring["left"], rb["phase_l"], rb["phase_r"]) * rb["pitch"]
    cartilage = ring["phi"] > rb["cart"]
    depth = ring["depth"]
    radial_core = (depth > rb["cortex"]) & (depth < an.rib_thickness - rb["cortex"])
    for k, z in enumerate(grid.z):
        q = z + rb["drop"] * g - phase
        dz = q - rb["pitch"] * np.round(q / rb["pitch"])
        in_rib = np.abs(dz) < rb["half_h"]
        if not in_rib.any():
            continue
        flat = tissue[k].reshape(-1)
        core = in_rib & radial_core & (np.abs(dz) < rb["half_h"] - rb["cortex"])
        flat[ring["idx"][in_rib & ~cartilage]] = CORTICAL_BONE
        flat[ring["idx"][core & ~cartilage]] = CANCELLOUS_BONE
        flat[ring["idx"][in_rib & cartilage]] = CARTILAGE


def _paint_spine_sternum(tissue: np.ndarray, grid: Grid, an: _Anatomy, z_xiphoid: float) -> None:
    sp, st = an.spine, an.sternum
    lo = np.array([sp["x"] - 45.0, sp["y"] - sp["r"] - 2.0, 0.0])
    hi = np.array([sp["x"] + 45.0, sp["canal_y"] + sp["canal_r"] + sp["arch"] + 32.0, 0.0])
    box = grid.box(np.array([lo[0], lo[1], grid.z0]), np.array([hi[0], hi[1], grid.z[-1]]))
    if box is not None:
        x, y, _ = grid.coords(box)
        dx = (x - sp["x"])[None, :]
        r_body = np.sqrt(dx**2 + ((y - sp["y"]) ** 2)[:, None])
        r_canal = np.sqrt(dx**2 + ((y - sp["canal_y"]) ** 2)[:, None])
        body_cortex, body_core = r_body < sp["r"], r_body < sp["r"] - sp["cortex"]
        canal = r_canal < sp["canal_r"]
        yc = (y - sp["canal_y"])[:, None]
        arch = (r_canal < sp["canal_r"] + sp["arch"]) & (yc > -0.3 * sp["canal_r"]) & ~canal
        spinous = (dx / 4.5) ** 2 + ((yc - sp["canal_r"] - 14.0) / 15.0) ** 2 < 1.0
        spinous_core = (dx / 2.8) ** 2 + ((yc - sp["canal_r"] - 14.0) / 13.0) ** 2 < 1.0
        transverse = ((np.abs(dx) - 22.0) / 12.0) ** 2 + ((yc + 2.0) / 5.0) ** 2 < 1.0
        post = arch | spinous
        for k, z in enumerate(grid.z[box[0]]):
            t = tissue[box[0].start + k, box[1], box[2]]
            q = (z / sp["pitch"] - sp["phase"]) % 1.0  # position within a vertebral level
            dd = min(q, 1.0 - q) * sp["pitch"]  # distance to the nearest disc centre
            if dd < sp["disc"] / 2:
                t[body_cortex] = DISC
                t[canal] = CSF
                continue
            if dd < sp["disc"] / 2 + 1.5:  # endplate
                t[body_cortex] = CORTICAL_BONE
            else:
                t[body_cortex] = CORTICAL_BONE
                t[body_core] = CANCELLOUS_BONE
            mid = abs(q - 0.5) < 0.2
            t[post | (transverse if mid else False)] = CORTICAL_BONE
            t[spinous_core] = CANCELLOUS_BONE
            t[canal] = CSF
    box = grid.box(np.array([st["x"] - st["a"], st["y"] - st["b"], z_xiphoid - 25.0]),
                   np.array([st["x"] + st["a"], st["y"] + st["b"], grid.z[-1]]))
    if box is not None:
        x, y, _ = grid.coords(box)
        dx, dy = (x - st["x"])[None, :], (y - st["y"])[:, None]
        outer = (dx / st["a"]) ** 2 + (dy / st["b"]) ** 2 < 1.0
        inner = (dx / (st["a"] - 1.2)) ** 2 + (dy / (st["b"] - 1.2)) ** 2 < 1.0
        xo = (dx / 6.0) ** 2 + (dy / 4.0) ** 2 < 1.0
        xi = (dx / 4.8) ** 2 + (dy / 2.8) ** 2 < 1.0
        for k, z in enumerate(grid.z[box[0]]):
            t = tissue[box[0].start + k, box[1], box[2]]
            o, i = (outer, inner) if z >= z_xiphoid else (xo, xi)
            t[o] = CORTICAL_BONE
            t[i] = CANCELLOUS_BONE


def _paint_capsule(tissue: np.ndarray, grid: Grid, a: np.ndarray, b: np.ndarray, r: float, tis: int,
                   only: tuple[int, ...] | None = None) -> None:
    box, d2 = _capsule_dist2(grid, a, b, r)
    if box is None:
        return
    t = tissue[box]
    m = d2 < r * r
    if only is not None:
        m &= np.isin(t, only)
    _paint(t, tis, m)


def _paint_anatomy(grid: Grid, an: _Anatomy, table: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes (Z, Y, X) and the heart region (bool); later steps paint over earlier ones."""
    base, ring = _base_slice(grid, an, table)
    tissue = np.empty(grid.shape, dtype=np.uint8)
    tissue[...] = base[None]
    heart_region = np.zeros(grid.shape, dtype=bool)
    _paint_lung_vessels(tissue, grid, an)
    _paint_diaphragm(tissue, grid, an)
    _paint_mediastinal_fat(tissue, grid, an)
    _paint_heart(tissue, heart_region, grid, an)
    _paint_vessels_and_airways(tissue, grid, an)
    _paint_coronaries(tissue, heart_region, grid, an)
    v = an.ventricles
    z_xiphoid = v.centre[2] - v.extent(an.s_peri_line)[2] + 15.0
    _paint_spine_sternum(tissue, grid, an, z_xiphoid)
    _paint_ribs(tissue, grid, an, ring)
    return tissue, heart_region


def _paint_lung_vessels(tissue: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """Lung vessels, only where lung."""
    idx = _sphere_voxels(grid, *an.lung_vessels)
    if idx.size:
        flat = tissue.reshape(-1)
        idx = idx[flat[idx] == LUNG]
        flat[idx] = LUNG_VESSEL


def _paint_diaphragm(tissue: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """Diaphragm domes (liver, stomach with its gas) replace lung below the heart."""
    for ell, tis in ((an.liver, LIVER), (an.stomach, STOMACH)):
        box = ell.box(grid)
        if box is not None:
            t = tissue[box]
            _paint(t, tis, (ell.q(grid, box) < 1.0) & _is_lung(t))
    if an.gas is not None:
        box = an.gas.box(grid)
        if box is not None:
            t = tissue[box]
            _paint(t, AIRWAY, (an.gas.q(grid, box) < 1.0) & (t == STOMACH))


def _paint_mediastinal_fat(tissue: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """Central mediastinum (fat from sternum to spine between the lungs) and fat around great vessels and airways."""
    a_c, b_c, y_c = an.cavity
    sp = an.spine
    front, back = y_c - b_c, sp["y"]
    w = 28.0 * an.body_scale
    box = grid.box(np.array([sp["x"] - w, front, grid.z0]), np.array([sp["x"] + w, back, grid.z[-1]]))
    if box is not None:
        x, y, _ = grid.coords(box)
        col = ((x - sp["x"]) / w)[None, :] ** 2 + ((y - (front + back) / 2) / ((back - front) / 2))[:, None] ** 2 < 1
        t = tissue[box]
        _paint(t, MEDIASTINAL_FAT, col[None] & _is_lung(t))
    vessels = [(an.root, an.asc_top, an.asc_r), an.desc, an.esophagus[:3], an.svc] + an.pa
    for a, b, r in vessels:
        _paint_capsule(tissue, grid, a, b, r + 5.0, MEDIASTINAL_FAT, only=_LUNGLIKE)
    for a, b, r in an.airways:
        _paint_capsule(tissue, grid, a, b, r + 4.0, MEDIASTINAL_FAT, only=_LUNGLIKE)


def _paint_heart(tissue: np.ndarray, heart_region: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """Mediastinal fat around the sac, pericardium, epicardial fat, myocardium, blood pools; the heart region."""
    v, at = an.ventricles, an.atria
    boxes = [e.box(grid, an.s_mediastinum) for e in (v, at)]
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return
    hbox = tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))
    dq = v.q(grid, hbox)
    abox = at.box(grid, an.s_mediastinum)
    if abox is not None:
        sub = tuple(slice(abox[i].start - hbox[i].start, abox[i].stop - hbox[i].start) for i in range(3))
        np.minimum(dq[sub], at.q(grid, abox), out=dq[sub])
    t = tissue[hbox]
    _paint(t, MEDIASTINAL_FAT, (dq < an.s_mediastinum**2) & _is_lung(t))
    _paint(t, PERICARDIUM, dq < an.s_peri_line**2)
    _paint(t, EPICARDIAL_FAT, dq < an.s_peri**2)
    _paint(t, MYOCARDIUM, dq < 1.0)
    heart_region[hbox] = dq < an.s_region**2
    for cav in (an.lv, an.rv):
        cbox = cav.box(grid)
        if cbox is not None:
            tc = tissue[cbox]
            sub = tuple(slice(cbox[i].start - hbox[i].start, cbox[i].stop - hbox[i].start) for i in range(3))
            _paint(tc, BLOOD, (cav.q(grid, cbox) < 1.0) & (dq[sub] < 0.85))
    abox = at.box(grid, 0.8)
    if abox is not None:
        _paint(tissue[abox], BLOOD, at.q(grid, abox) < 0.64)


def _paint_vessels_and_airways(tissue: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """Great vessels (blood), esophagus (with air in some), airways with their walls."""
    _paint_capsule(tissue, grid, *an.desc, BLOOD)
    ea, eb, er, air = an.esophagus
    _paint_capsule(tissue, grid, ea, eb, er, ESOPHAGUS)
    if air > 0:
        _paint_capsule(tissue, grid, ea + np.array([0.0, -1.0, 0.0]), eb, air, AIRWAY)
    _paint_capsule(tissue, grid, *an.svc, BLOOD)
    for a, b, r in an.pa:
        _paint_capsule(tissue, grid, a, b, r, BLOOD)
    _paint_capsule(tissue, grid, an.root, an.asc_top, an.asc_r, BLOOD)
    for a, b, r in an.airways:
        _paint_capsule(tissue, grid, a, b, r + 1.8, AIRWAY_WALL)
    for a, b, r in an.airways:
        _paint_capsule(tissue, grid, a, b, r, AIRWAY)


def _paint_coronaries(tissue: np.ndarray, heart_region: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """Coronary arteries: a fat halo (they run in the grooves' fat), then the vessel; they and the aortic root (where
    LM and RCA leave the aorta) join the heart region."""
    flat = tissue.reshape(-1)
    pts = np.concatenate([art.pts for art in an.arteries])
    rad = np.concatenate([art.radius for art in an.arteries])
    halo = _sphere_voxels(grid, pts, rad + an.coronary_fat_mm)
    halo = halo[np.isin(flat[halo], (MYOCARDIUM, PERICARDIUM, EPICARDIAL_FAT, MEDIASTINAL_FAT, LUNG, LUNG_VESSEL))]
    flat[halo] = EPICARDIAL_FAT
    _ostial_segments_in_fat(flat, grid, an)
    flat[_sphere_voxels(grid, pts, rad)] = CORONARY_WALL
    hr = heart_region.reshape(-1)
    hr[_sphere_voxels(grid, pts[::4], rad[::4] + 5.0)] = True
    box, d2 = _capsule_dist2(grid, an.root, an.root + np.array([0.0, 0.0, 15.0]), an.root_r + 5.0)
    if box is not None:
        heart_region[box] |= d2 < (an.root_r + 5.0) ** 2


def _ostial_segments_in_fat(flat: np.ndarray, grid: Grid, an: _Anatomy) -> None:
    """The left main (between the aortic root, the pulmonary trunk and the left atrium) and the proximal RCA (in the
    right atrioventricular groove) run in fat, never through blood: their halos replace blood too, except in the
    aortic root and ascending aorta they leave from."""
    arc = [np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(art.pts, axis=0), axis=1)))) for art in an.arteries]
    near = [a <= art.ostial_mm for art, a in zip(an.arteries, arc)]
    pts = np.concatenate([art.pts[m] for art, m in zip(an.arteries, near)])
    radius = np.concatenate([art.radius[m] for art, m in zip(an.arteries, near)])
    idx = _sphere_voxels(grid, pts, radius + an.coronary_fat_mm)
    idx = idx[flat[idx] == BLOOD]
    box, d2 = _capsule_dist2(grid, an.root, an.asc_top, an.asc_r)  # the aorta as `_paint_vessels_and_airways` paints it
    aorta = np.zeros(grid.shape, dtype=bool)
    if box is not None:
        aorta[box] = d2 < an.asc_r**2
    flat[idx[~aorta.reshape(-1)[idx]]] = EPICARDIAL_FAT


# --- calcium --------------------------------------------------------------------------------------------------
def _render_plaque(pl: Plaque, grid: Grid, kernel: np.ndarray, thickness: float) -> bool:
    """Sample the plaque's density on its box (averaged over the slice thickness, blurred in-plane)."""
    h = pl.fwhm_mm / 2.0
    reach = 1.9 * np.sqrt(((pl.axes.T * h[None, :]) ** 2).sum(axis=1))
    pad = len(kernel) // 2 + 1
    lo = pl.centre_mm - reach - np.array([0.0, 0.0, thickness / 2])
    hi = pl.centre_mm + reach + np.array([0.0, 0.0, thickness / 2])
    box = grid.box(lo, hi, pad_px=pad)
    if box is None:
        return False
    x, y, z = grid.coords(box)
    n_sub = max(4, int(math.ceil(thickness / 0.3)))
    zs = z[:, None] + ((np.arange(n_sub) + 0.5) / n_sub - 0.5)[None, :] * thickness
    dx = (x - pl.centre_mm[0]).astype(np.float32)[None, None, None, :]
    dy = (y - pl.centre_mm[1]).astype(np.float32)[None, None, :, None]
    dz = (zs - pl.centre_mm[2]).astype(np.float32)[:, :, None, None]
    r2 = None
    for i in range(3):
        ax = pl.axes[i]
        c = (dx * ax[0] + dy * ax[1] + dz * ax[2]) / np.float32(h[i])
        r2 = c * c if r2 is None else r2 + c * c
    f = np.exp(-math.log(2.0) * r2 * r2).mean(axis=1) * np.float32(pl.density_hu)
    pl.patch = _blur2d(f.astype(np.float32), kernel, mode="constant")
    pl.box = box
    return True


_S2D = np.zeros((3, 3, 3), dtype=bool)
_S2D[1] = True  # 8-connected components within each slice, none across slices


def _box_agatston(val: np.ndarray, region: np.ndarray, grid: Grid) -> float:
    """Agatston score of the calcium inside ``region`` on a box of rounded HU (the scoring module's rules)."""
    lesions = find_lesions(val, (grid.dz, grid.ps, grid.ps), mask=region, config=SCORING)
    return float(sum(les.agatston for les in lesions))


def _perp_frame(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = _unit(np.cross(t, _unit(rng.normal(size=3))))
    return n, np.cross(t, n)


def _usable(pts: np.ndarray, grid: Grid, margin: float = 4.0) -> np.ndarray:
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    return (
        (z >= grid.z0 + margin) & (z <= grid.z[-1] - margin)
        & (x >= grid.x0 + margin) & (x <= grid.x[-1] - margin)
        & (y >= grid.y0 + margin) & (y <= grid.y[-1] - margin)
    )


def _draw_coronary(
    rng: np.random.Generator, config: SynthConfig, an: _Anatomy, grid: Grid, category: int,
    hu: np.ndarray, kernel: np.ndarray, first: list[Plaque] = (),
) -> tuple[list[Plaque], float, float]:
    """Add coronary plaques to ``hu`` (blurred anatomy + noise) until the score reaches a target in the category.

    ``first``: plaques placed before the drawn ones (`_special_plaques`), each kept if it fits the category.
    Each candidate is scored on the image it will land in (noise and earlier plaques included), so the
    measured score of the finished scan matches the running total up to rounding and plaque overlaps.
    """
    if category == 0:
        return [], 0.0, 0.0
    lo, hi = config.target_range(category)
    target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    cap = CATEGORY_BOUNDS[category][1] / 1.1 if category < 4 else config.max_score * 1.3
    usable = [np.flatnonzero(_usable(a.pts, grid)) for a in an.arteries]
    weights = np.array([w if len(u) else 0.0 for w, u in zip(config.artery_weights, usable)])
    if weights.sum() == 0:
        return [], target, 0.0
    weights /= weights.sum()
    d_lo, d_hi = config.plaque_diameter_mm
    h_lo, h_hi = config.plaque_density_hu
    region = np.zeros(grid.shape, dtype=bool)  # union of the coronary plaques' regions so far
    plaques: list[Plaque] = []
    total = 0.0

    def add(pl: Plaque) -> float | str:
        """Render and score ``pl`` on the image; keep it and return its score, or say why not ("outside", "nothing"
        or "too much" for the category)."""
        if not _render_plaque(pl, grid, kernel, grid.dz):
            return "outside"
        v0, r0 = hu[pl.box], region[pl.box]
        r1 = r0 | (pl.patch >= PLAQUE_REGION_HU)
        est = _box_agatston(np.rint(v0 + pl.patch), r1, grid) - _box_agatston(np.rint(v0), r0, grid)
        if est <= 0.0:
            return "nothing"
        if total + est > cap:
            return "too much"
        pl.estimated_agatston = est
        v0 += pl.patch
        r0 |= r1
        plaques.append(pl)
        return est

    for pl in first:
        if _usable(pl.centre_mm[None, :], grid)[0] and not isinstance(est := add(pl), str):
            total += est
    scale = 1.0
    for _ in range(30 * config.max_plaques + 20):
        if total >= target or len(plaques) >= config.max_plaques:
            break
        ai = int(rng.choice(4, p=weights))
        art, idx = an.arteries[ai], usable[ai]
        j = int(idx[min(int(rng.beta(1.1, 1.5) * len(idx)), len(idx) - 1)])
        t = art.tangent[j]
        n, b = _perp_frame(rng, t)
        # Small plaques are the common ones: a burden is reached with several, spread over slices.
        d = float(np.clip((d_lo + (d_hi - d_lo) * rng.random() ** 2.0) * scale, d_lo, d_hi))
        dens = h_lo + (h_hi - h_lo) * rng.random() ** 2.0
        dens = float(max(h_lo, dens * min(1.0, scale**0.5)))
        # Calcifications are elongated along the vessel, thin across its wall.
        along = min(d * rng.uniform(1.2, 3.0), 15.0)
        fwhm = np.maximum(np.array([along, d * rng.uniform(0.4, 0.75), d * rng.uniform(0.6, 1.0)]), 0.6)
        centre = art.pts[j] + n * art.radius[j] * rng.uniform(0.2, 0.8)
        est = add(Plaque(art.label, centre, np.stack([t, n, b]), fwhm, dens))
        if est == "nothing":
            scale = min(scale * 1.3, 1.5)
        elif est == "too much":
            scale *= 0.75
        if isinstance(est, str):
            continue
        total += est
        scale = 1.0
    return plaques, target, total


def _special_plaques(rng: np.random.Generator, config: SynthConfig, an: _Anatomy, category: int) -> list[Plaque]:
    """Plaques of real heavy or awkward burdens, placed before the drawn ones: a large multi-slice plaque (categories
    101-400 and >400, ``large_plaque_prob``) and left-main calcium at the ostium (``ostial_lm_prob``)."""
    out: list[Plaque] = []
    u = rng.uniform
    n_large = int(category >= 3 and rng.random() < config.large_plaque_prob)
    n_large += int(n_large and category >= 4 and rng.random() < config.large_plaque_prob)
    for _ in range(n_large):
        w = np.asarray(config.artery_weights[1:], dtype=float)
        art = an.arteries[1 + int(rng.choice(3, p=w / w.sum()))]
        j = int(u(0.05, 0.5) * len(art.pts))
        t = art.tangent[j]
        n, b = _perp_frame(rng, t)
        d = u(4.5, 8.0)
        fwhm = np.array([u(15.0, 30.0), d * u(0.6, 0.9), d * u(0.8, 1.0)])
        out.append(Plaque(art.label, art.pts[j] + n * art.radius[j] * u(0.2, 0.6), np.stack([t, n, b]), fwhm,
                          u(1000.0, 2200.0)))
    if category >= 1 and rng.random() < config.ostial_lm_prob:
        lm = next(a for a in an.arteries if a.label == LM)
        j = int(rng.integers(1, 4))
        t = lm.tangent[j]
        n, b = _perp_frame(rng, t)
        fwhm = np.array([u(3.0, 6.0), u(1.5, 3.0), u(2.0, 3.5)])
        out.append(Plaque(LM, lm.pts[j] + n * lm.radius[j] * u(0.2, 0.6), np.stack([t, n, b]), fwhm, u(400.0, 1200.0)))
    return out


def _ostial_aortic(rng: np.random.Generator, an: _Anatomy, lm_plaque: Plaque) -> Plaque:
    """Calcium of the aortic root's wall at the left-main ostium, touching ``lm_plaque`` (labelled aortic)."""
    u = rng.uniform
    radial = _unit((lm_plaque.centre_mm - an.root) * np.array([1.0, 1.0, 0.0]))
    axis = np.array([0.0, 0.0, 1.0])
    circ = np.cross(axis, radial)
    centre = an.root + radial * (an.root_r - 0.5) + circ * u(-2.0, 2.0) + axis * (lm_plaque.centre_mm[2] - an.root[2])
    fwhm = np.array([u(3.0, 7.0), u(1.0, 1.8), u(4.0, 8.0)])
    return Plaque(AORTIC, centre, np.stack([axis, radial, circ]), fwhm, u(400.0, 1200.0))


def _ring(axis: np.ndarray, angles: np.ndarray, reference: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Unit radial and tangential directions at ``angles`` around ``axis`` (angle 0: axis x ``reference``)."""
    ref = _unit(np.cross(axis, reference))
    ref2 = np.cross(axis, ref)
    for ang in angles:
        radial = math.cos(ang) * ref + math.sin(ang) * ref2
        yield radial, np.cross(axis, radial)


def _draw_noncoronary(
    rng: np.random.Generator, config: SynthConfig, an: _Anatomy, grid: Grid, category: int, kernel: np.ndarray,
    special: list[Plaque] = (),
) -> list[Plaque]:
    """Hard negatives: aortic wall calcification (label 5), aortic valve / mitral annulus calcification (6); with an
    ostial left-main plaque among ``special``, the aortic root calcium it touches."""
    out: list[Plaque] = [_ostial_aortic(rng, an, pl) for pl in special if pl.label == LM]
    boost = 0.4 + 0.3 * category
    u = rng.uniform
    if rng.random() < min(1.0, config.aortic_calcification_prob * boost):
        for _ in range(int(rng.integers(1, 7))):
            if rng.random() < 0.5:  # the ascending aorta from the root (sinuses) up
                a, b, r = an.root, an.asc_top, an.asc_r
            else:
                a, b, r = an.desc
            z_lo, z_hi = max(grid.z0 + 3.0, min(a[2], b[2])), min(grid.z[-1] - 3.0, max(a[2], b[2]))
            if z_lo >= z_hi:
                continue
            zt = u(z_lo, z_hi)
            axis = _unit(b - a)
            p = a + axis * (zt - a[2]) / axis[2]
            # specks to arcs of the wall: 1-4 blobs side by side along the circumference
            fw = np.array([u(1.5, 8.0), u(0.8, 2.0), u(2.0, 10.0)])
            density = u(300.0, 1300.0)
            ang0 = u(0, 2 * math.pi)
            angles = ang0 + np.arange(int(rng.integers(1, 5))) * 0.7 * fw[2] / r
            for radial, circ in _ring(axis, angles, np.array([1.0, 0.0, 0.0])):
                out.append(Plaque(AORTIC, p + radial * (r - 1.0), np.stack([axis, radial, circ]), fw, density))
    if rng.random() < min(1.0, config.valve_calcification_prob * boost):
        v = an.ventricles
        e1 = v.rot[:, 0]
        kinds = ["aortic", "mitral"] if rng.random() < 0.35 else [["aortic", "mitral"][int(rng.integers(2))]]
        for kind in kinds:
            if kind == "aortic":
                centre, radius, axis = an.root, an.root_r * 0.8, np.array([0.0, 0.0, 1.0])
                angles = u(0, 2 * math.pi, size=int(rng.integers(1, 4)))
                sizes = (3.0, 7.0)
            else:
                centre = v.centre - 0.62 * v.semi[0] * e1 - 0.25 * v.semi[1] * v.rot[:, 1]
                radius, axis = u(13.0, 17.0) * an.heart_scale, e1
                start, span = math.pi + u(-0.6, 0.6), u(math.pi / 3, 10 * math.pi / 9)
                angles = start - span / 2 + np.arange(0.0, span, 3.5 / radius)
                sizes = (3.0, 5.5)
            for radial, tang in _ring(axis, angles, np.array([0.0, 1.0, 0.0])):
                fw = np.array([u(*sizes), u(2.0, 4.0), u(2.0, 4.0)])
                density = u(300.0, 1800.0)
                out.append(Plaque(VALVE, centre + radial * radius, np.stack([tang, radial, axis]), fw, density))
    return [p for p in out if _render_plaque(p, grid, kernel, grid.dz)]


def _target_category(config: SynthConfig, index: int) -> int:
    """Target risk category of patient ``index``: dealt from shuffled blocks (see SynthConfig.category_cycle)."""
    w = np.asarray(config.category_weights, dtype=float)
    w = w / w.sum()
    n = config.category_cycle
    if n == 1:
        return int(np.random.default_rng([config.seed, 2**32 - 1, index]).choice(5, p=w))
    quota = w * n
    counts = np.floor(quota).astype(int)
    for k in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    deck = np.repeat(np.arange(5), counts)
    block = np.random.default_rng([config.seed, 2**32 - 1, index // n]).permutation(deck)
    return int(block[index % n])


# --- image formation and ground truth --------------------------------------------------------------------------
def _despeckle(hu: np.ndarray, labels: np.ndarray, heart_region: np.ndarray, tissue: np.ndarray, grid: Grid) -> int:
    """Flatten noise components >= 130 HU of >= ~1 mm^2 touching the heart region to 129 HU; return voxels changed.

    With noise SDs up to 30 HU on ~40 HU blood, such specks are unavoidable in a fraction of scans; real
    scorers would count them as (false) lesions, but the ground truth promises that every >= 1 mm^2
    component in the heart region is calcium or bone. Components touching a plaque label or bone are kept.
    Components are found on the heart region's box widened by 10 mm, far more than a noise speck spans.
    """
    zs = np.flatnonzero(heart_region.any(axis=(1, 2)))
    if zs.size == 0:
        return 0
    ys = np.flatnonzero(heart_region[zs[0] : zs[-1] + 1].any(axis=(0, 2)))
    xs = np.flatnonzero(heart_region[zs[0] : zs[-1] + 1].any(axis=(0, 1)))
    m = int(math.ceil(10.0 / grid.ps))
    z0, y0, x0 = int(zs[0]), max(int(ys[0]) - m, 0), max(int(xs[0]) - m, 0)
    box = (slice(z0, int(zs[-1]) + 1), slice(y0, min(int(ys[-1]) + 1 + m, grid.ny)),
           slice(x0, min(int(xs[-1]) + 1 + m, grid.nx)))
    above = hu[box] >= CALCIUM_THRESHOLD_HU
    lab, n = ndi.label(above, structure=_S2D)
    if n == 0:
        return 0
    # Work on the voxels above threshold only, addressed in the full volume.
    local = np.flatnonzero(above)
    comp = lab.ravel()[local]
    bz, rest = np.divmod(local, above.shape[1] * above.shape[2])
    by, bx = np.divmod(rest, above.shape[2])
    flat = ((bz + z0) * grid.ny + (by + y0)) * grid.nx + (bx + x0)
    area = np.bincount(comp, minlength=n + 1) * grid.ps**2
    big = area >= DESPECKLE_AREA_MM2
    big[0] = False
    if not big.any():
        return 0
    sel = big[comp]
    comp, flat = comp[sel], flat[sel]
    touch = np.zeros(n + 1, dtype=bool)
    touch[comp[heart_region.reshape(-1)[flat]]] = True
    t = tissue.reshape(-1)[flat]
    exempt = np.zeros(n + 1, dtype=bool)
    exempt[comp[(labels.reshape(-1)[flat] > 0) | (t == CORTICAL_BONE) | (t == CANCELLOUS_BONE)]] = True
    bad = touch & ~exempt
    if not bad.any():
        return 0
    change = flat[bad[comp]]
    hu.reshape(-1)[change] = CALCIUM_THRESHOLD_HU - 1.0
    return int(change.size)


def _connected_slices(mask: np.ndarray, pixel_area: float) -> list[int]:
    """Slices of ``mask`` holding an 8-connected 2D component of at least 1 mm^2."""
    if mask.size == 0:
        return []
    lab, n = ndi.label(mask, structure=_S2D)
    if n == 0:
        return []
    area = np.bincount(lab.ravel(), minlength=n + 1) * pixel_area
    ok = area >= MIN_LESION_AREA_MM2 - 1e-9
    ok[0] = False
    return sorted({int(k) for k in np.flatnonzero(ok[lab].any(axis=(1, 2)))})


def generate_patient(config: SynthConfig, index: int) -> SyntheticPatient:
    """Generate patient ``index`` of the data set described by ``config`` (deterministic in seed and index)."""
    if not isinstance(config, SynthConfig):
        raise InputError("config", f"must be a SynthConfig, got {type(config).__name__}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise InputError("index", f"must be a non-negative integer, got {index!r}")
    index = int(index)
    rng = np.random.default_rng([config.seed, index])
    pid = patient_id(index)
    an = _draw_anatomy(rng, config)
    grid, gated, table_z = _draw_grid(rng, config, an)
    noise_sd = float(rng.uniform(*config.noise_sd_hu))
    fwhm = float(rng.uniform(*config.psf_fwhm_mm))
    kernel = _psf_kernel(fwhm, grid.ps)

    tissue, heart_region = _paint_anatomy(grid, an, config.table)
    category = _target_category(config, index)
    hu = _blurred_noisy_anatomy(rng, grid, an, tissue, kernel, noise_sd)
    # Calcium arrives blurred by the same kernel (rendered on small boxes): distractors first, then the
    # coronary plaques, drawn on the final image until the burden reaches its target.
    special = _special_plaques(rng, config, an, category)
    plaques = _draw_noncoronary(rng, config, an, grid, category, kernel, special)
    for pl in plaques:
        hu[pl.box] += pl.patch
    coronary, target, estimate = _draw_coronary(rng, config, an, grid, category, hu, kernel, special)
    plaques += coronary
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    np.rint(hu, out=hu)
    labels = _plaque_labels(hu, plaques)
    flattened = _despeckle(hu, labels, heart_region, tissue, grid)

    spacing = (float(grid.dz), float(grid.ps), float(grid.ps))
    origin = (float(grid.x0), float(grid.y0), float(grid.z0 + table_z))
    meta = {
        "patient_id": pid, "modality": "CT", "kvp": float(config.kvp), "source": "coronary_calcium.synth",
        "series_description": "Synthetic calcium score" if gated else "Synthetic chest CT",
        "seed": int(config.seed), "index": index,
    }
    volume = CTVolume(hu=hu, spacing=spacing, origin=origin, direction=np.eye(3), slice_thickness=float(grid.dz),
                      meta=meta)
    generation = {
        "seed": int(config.seed), "index": index, "kvp": float(config.kvp), "gated": gated,
        "shape": list(grid.shape), "spacing_mm": list(spacing), "origin_mm": list(origin),
        "slice_thickness_mm": float(grid.dz), "fov_mm": float(grid.ps * grid.nx),
        "noise_sd_hu": round(noise_sd, 3), "psf_fwhm_mm": round(fwhm, 4),
        **_anatomy_record(an, table_z),
        "target_category": CATEGORY_LABELS[category], "target_agatston": round(target, 3),
        "estimated_agatston": round(estimate, 3), "despeckled_voxels": flattened,
    }
    truth = _truth(pid, volume, labels, plaques, generation, table_z)
    return SyntheticPatient(pid, volume, labels, heart_region, truth, tissue, plaques)


def _blurred_noisy_anatomy(rng: np.random.Generator, grid: Grid, an: _Anatomy, tissue: np.ndarray,
                           kernel: np.ndarray, noise_sd: float) -> np.ndarray:
    """Tissue HU plus white noise, both blurred in-plane by ``kernel`` in one pass (which colours the noise)."""
    hu = np.empty(grid.shape, dtype=np.float32)
    for k in range(grid.nz):  # per slice: a whole-volume take is several times slower
        np.take(an.hu, tissue[k], out=hu[k])
    buf = np.empty_like(hu)
    rng.standard_normal(out=buf, dtype=np.float32)
    buf *= np.float32(noise_sd / float((kernel.astype(np.float64) ** 2).sum()))
    hu += buf
    ndi.correlate1d(hu, kernel, axis=2, output=buf, mode="nearest")
    ndi.correlate1d(buf, kernel, axis=1, output=hu, mode="nearest")
    return hu


def _plaque_labels(hu: np.ndarray, plaques: list[Plaque]) -> np.ndarray:
    """Labels: each plaque's region (where it adds >= 10 HU and dominates) at >= 130 HU in the final image."""
    labels = np.zeros(hu.shape, dtype=np.uint8)
    best = np.zeros(hu.shape, dtype=np.float32)
    for pl in plaques:
        b, lb = best[pl.box], labels[pl.box]
        win = (pl.patch >= PLAQUE_REGION_HU) & (pl.patch > b)
        b[win] = pl.patch[win]
        lb[win] = pl.label
    for pl in plaques:
        lb = labels[pl.box]
        lb[hu[pl.box] < CALCIUM_THRESHOLD_HU] = 0
    return labels


def _anatomy_record(an: _Anatomy, table_z: float) -> dict[str, Any]:
    """The truth's record of the drawn body, heart and tissue HU (rounded; scanner z)."""
    return {
        "body_semi_axes_mm": [round(an.body[0], 2), round(an.body[1], 2)], "body_scale": round(an.body_scale, 4),
        "subcutaneous_fat_mm": round(an.fat, 2), "epicardial_fat_mm": round(an.epicardial_fat, 2),
        "coronary_fat_mm": round(an.coronary_fat_mm, 2),
        "heart_centre_mm": [round(float(c), 2) for c in an.ventricles.centre + np.array([0.0, 0.0, table_z])],
        "heart_semi_axes_mm": [round(float(s), 2) for s in an.ventricles.semi],
        "heart_long_axis": [round(float(c), 4) for c in an.ventricles.rot[:, 0]],
        "heart_angles_deg": {"azimuth": round(an.angles_deg[0], 2), "elevation": round(an.angles_deg[1], 2),
                             "roll": round(an.angles_deg[2], 2)},
        "tissue_hu": {TISSUE_NAMES[t]: round(float(an.hu[t]), 1) for t in range(len(TISSUE_NAMES))},
    }


def _truth(pid: str, volume: CTVolume, labels: np.ndarray, plaques: list[Plaque], generation: dict[str, Any],
           table_z: float) -> dict[str, Any]:
    score = score_scan(volume.hu, volume.spacing, labels=labels, config=SCORING)
    pixel_area = volume.pixel_area_mm2
    # Work on the box around the labelled voxels (slice indices stay global).
    flat = np.flatnonzero(labels)
    crop = np.zeros((0, 0, 0), dtype=np.uint8)
    z0 = 0
    if flat.size:
        z, rest = np.divmod(flat, labels.shape[1] * labels.shape[2])
        y, x = np.divmod(rest, labels.shape[2])
        z0 = int(z.min())
        crop = labels[z0 : z.max() + 1, y.min() : y.max() + 1, x.min() : x.max() + 1]

    def slices_1mm2(mask: np.ndarray) -> list[int]:
        return [k + z0 for k in _connected_slices(mask, pixel_area)]

    positive = slices_1mm2((crop >= min(CORONARY_LABELS)) & (crop <= max(CORONARY_LABELS)))
    non_coronary = {}
    for lab in (AORTIC, VALVE):
        per_slice = (crop == lab).sum(axis=(1, 2))
        non_coronary[LABEL_NAMES[lab]] = {
            "voxels": int(per_slice.sum()),
            "slices": [int(k) + z0 for k in np.flatnonzero(per_slice)],
            "slices_1mm2": slices_1mm2(crop == lab),
        }
    plaque_dicts = []
    for p in plaques:
        d = p.to_dict()
        d["centre_mm"][2] = round(d["centre_mm"][2] + table_z, 3)
        plaque_dicts.append(d)
    sd = score.to_dict()
    return {
        "patient_id": pid,
        "generator": "coronary_calcium.synth",
        "agatston": sd["agatston"],
        "risk_category": score.categories["5-class"],
        "categories": sd["categories"],
        "per_artery": sd["per_artery"],
        "n_lesions": sd["n_lesions"],
        "lesions": sd["lesions"],
        "scoring": sd["config"],
        "n_slices": int(volume.shape[0]),
        "positive_slices": positive,
        "n_positive_slices": len(positive),
        "non_coronary": non_coronary,
        "plaques": plaque_dicts,
        "generation": generation,
    }
