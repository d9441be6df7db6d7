"""Anatomy of the "shifted" synthetic family: an independently written chest model (see `synth/shifted.py`).

Nothing here but the voxel grid (`synth/grid.py`) is shared with `synth/phantom.py`: the body is a lobulated,
z-varying outline with angle-dependent fat and muscle, the heart a metaball field of four chambers (lobulated, with
an epicardial fat layer whose thickness follows the field and a smooth random modulation, and a pericardium line),
the coronary arteries are tapering, tortuous curves cast onto the mid-fat level of that field (LM from the aortic
root, LAD down the anterior interventricular groove, LCX in the left AV groove, RCA in the right AV groove to the
crux), the aorta a root / ascending / arch / descending tube, plus pulmonary trunk, SVC, trachea, oesophagus, spine
with pedicles, laminae, spinous and transverse processes, ribs as 3D curves, sternum, costal cartilage with
calcification, diaphragm domes with liver, stomach and gas, breasts in some patients, branching lung vessels.

Coordinates are LPS millimetres (x to the patient's left, y posterior, z superior), arrays [z, y, x].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from coronary_calcium.synth.grid import Grid

# --- tissue classes ---------------------------------------------------------------------------------------
(
    AIR, TABLE, SKIN, FAT, MUSCLE, BREAST, LUNG, LUNG_VESSEL, MED_FAT, EPI_FAT, PERICARDIUM, MYOCARDIUM, BLOOD,
    VESSEL_WALL, CORONARY, ESOPHAGUS, AIRWAY, AIRWAY_WALL, LIVER, STOMACH, GAS, CORTICAL, CANCELLOUS, DISC,
    CANAL, CARTILAGE, CARTILAGE_CALC,
) = range(27)
TISSUE_NAMES = (
    "air", "table", "skin", "subcutaneous fat", "muscle", "breast gland", "lung", "lung vessel",
    "mediastinal fat", "epicardial fat", "pericardium", "myocardium", "blood", "vessel wall", "coronary artery",
    "oesophagus", "airway", "airway wall", "liver", "stomach", "gas", "cortical bone", "cancellous bone", "disc",
    "spinal canal", "costal cartilage", "calcified cartilage",
)
# (min, max) HU of each tissue's mean and the SD of its smooth texture (heterogeneity), non-contrast 120 kVp.
TISSUE_HU = {
    AIR: ((-1000, -990), 0), TABLE: ((-200, 100), 10), SKIN: ((10, 50), 6), FAT: ((-125, -90), 12),
    MUSCLE: ((35, 60), 6), BREAST: ((-60, 20), 25), LUNG: ((-900, -800), 30), LUNG_VESSEL: ((20, 45), 5),
    MED_FAT: ((-120, -80), 14), EPI_FAT: ((-115, -75), 14), PERICARDIUM: ((10, 35), 5),
    MYOCARDIUM: ((38, 55), 7), BLOOD: ((30, 48), 4), VESSEL_WALL: ((35, 50), 4), CORONARY: ((25, 50), 4),
    ESOPHAGUS: ((25, 45), 5), AIRWAY: ((-1000, -960), 5), AIRWAY_WALL: ((10, 40), 5), LIVER: ((45, 70), 6),
    STOMACH: ((20, 45), 8), GAS: ((-1000, -950), 5), CORTICAL: ((600, 1300), 80), CANCELLOUS: ((120, 260), 35),
    DISC: ((60, 100), 6), CANAL: ((5, 25), 4), CARTILAGE: ((60, 130), 10), CARTILAGE_CALC: ((300, 900), 60),
}
BONE_TISSUES = (CORTICAL, CANCELLOUS, CARTILAGE_CALC)


def unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def resample(pts: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` mm of arc length along a polyline."""
    s = np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))))
    t = np.linspace(0.0, s[-1], max(2, int(s[-1] / step) + 1))
    return np.stack([np.interp(t, s, pts[:, i]) for i in range(3)], axis=1)


def ball_index(g: Grid, pts: np.ndarray, radii: np.ndarray, budget: int = 3_000_000) -> np.ndarray:
    """Flat indices (maybe repeated) of voxel centres within radii[j] of pts[j] for some j: a swept tube."""
    radii = np.broadcast_to(np.asarray(radii, dtype=float), (len(pts),))
    if len(pts) == 0 or radii.max() <= 0:
        return np.zeros(0, np.int64)
    kc = (pts[:, 2] - g.z0) / g.dz
    k0 = np.maximum(np.ceil(kc - radii / g.dz), 0).astype(np.int64)
    k1 = np.minimum(np.floor(kc + radii / g.dz), g.nz - 1).astype(np.int64)
    cnt = np.maximum(k1 - k0 + 1, 0)
    j = np.repeat(np.arange(len(pts)), cnt)
    if j.size == 0:
        return np.zeros(0, np.int64)
    k = k0[j] + np.arange(j.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    rho2 = radii[j] ** 2 - (g.z0 + k * g.dz - pts[j, 2]) ** 2
    cx, cy = (pts[j, 0] - g.x0) / g.ps, (pts[j, 1] - g.y0) / g.ps
    rad = int(math.ceil(radii.max() / g.ps)) + 1
    oy, ox = np.mgrid[-rad:rad + 1, -rad:rad + 1]
    keep = ox**2 + oy**2 <= (rad + 0.5) ** 2
    ox, oy = ox[keep], oy[keep]
    out = []
    step = max(1, budget // len(ox))
    for s in range(0, j.size, step):
        sl = slice(s, s + step)
        ix = np.rint(cx[sl]).astype(np.int64)[:, None] + ox[None]
        iy = np.rint(cy[sl]).astype(np.int64)[:, None] + oy[None]
        d2 = ((ix - cx[sl, None]) ** 2 + (iy - cy[sl, None]) ** 2) * g.ps**2
        m = (d2 <= rho2[sl, None]) & (ix >= 0) & (ix < g.nx) & (iy >= 0) & (iy < g.ny)
        out.append(((k[sl, None] * g.ny + iy) * g.nx + ix)[m])
    return np.concatenate(out)


def upsample(c: np.ndarray, f: int, ny: int, nx: int) -> np.ndarray:
    """Bilinear in-plane upsampling of a coarse (Z, Yc, Xc) array sampled every ``f`` fine pixels."""
    if f == 1 and c.shape[1:] == (ny, nx):
        return c.astype(np.float32, copy=False)
    out = c
    for axis, n in ((1, ny), (2, nx)):
        pos = np.arange(n) / f
        i0 = np.minimum(pos.astype(np.int64), out.shape[axis] - 2)
        w = (pos - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n
        a = np.take(out, i0, axis=axis).astype(np.float32, copy=False)
        b = np.take(out, i0 + 1, axis=axis).astype(np.float32, copy=False)
        b -= a
        b *= w.reshape(shape)
        a += b
        out = a
    return out


def smooth_field(rng: np.random.Generator, g: Grid, corr_mm: float, coarse_mm: float = 2.0) -> np.ndarray:
    """Zero-mean, unit-SD Gaussian random field (Z, Y, X) with in-plane correlation ``corr_mm``."""
    f = max(1, int(round(coarse_mm / g.ps)))
    shape = (g.nz, g.ny // f + 2, g.nx // f + 2)
    c = rng.standard_normal(shape, dtype=np.float32)
    c = ndi.gaussian_filter(c, (max(corr_mm / g.dz / 2, 0.3), corr_mm / (f * g.ps), corr_mm / (f * g.ps)))
    c /= max(float(c.std()), 1e-6)
    return upsample(c, f, g.ny, g.nx)


# --- anatomy description ----------------------------------------------------------------------------------
@dataclass
class Vessel:
    """A tube: centre line (N, 3) every ~1 mm and radius (N,)."""

    name: str
    pts: np.ndarray
    radius: np.ndarray

    @property
    def tangent(self) -> np.ndarray:
        t = np.gradient(self.pts, axis=0)
        return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)


@dataclass
class Anatomy:
    """One patient's anatomy (mm, LPS)."""

    hu: np.ndarray
    tex_sd: np.ndarray
    body: dict[str, Any]
    heart: dict[str, Any]
    aorta: Vessel
    vessels: list[Vessel]
    airways: list[Vessel]
    coronaries: dict[int, Vessel]
    spine: dict[str, float]
    ribs: list[Vessel]
    cartilage: list[Vessel]
    sternum: dict[str, float]
    dome: dict[str, float]
    breasts: list[tuple[np.ndarray, np.ndarray]]
    lung_vessels: tuple[np.ndarray, np.ndarray]
    valve: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def heart_centre(self) -> np.ndarray:
        return self.heart["centre"]


def _draw_hu(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    hu = np.array([rng.uniform(*TISSUE_HU[t][0]) for t in range(len(TISSUE_NAMES))], dtype=np.float32)
    tex = np.array([TISSUE_HU[t][1] * rng.uniform(0.6, 1.4) for t in range(len(TISSUE_NAMES))], dtype=np.float32)
    return np.round(hu, 1), tex


def _chambers(rng: np.random.Generator, hs: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Heart frame (columns e1 base->apex, e2 anterior, e3) and four chambers (centre offsets, sigmas) in it."""
    u = rng.uniform
    az, el = math.radians(u(38.0, 62.0)), math.radians(u(18.0, 38.0))
    e1 = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), -math.sin(el)])
    e2 = unit(np.array([0.0, -1.0, 0.0]) - (np.array([0.0, -1.0, 0.0]) @ e1) * e1)
    e3 = np.cross(e1, e2)  # towards the patient's right-superior side of the heart
    roll = math.radians(u(-15.0, 15.0))
    e2, e3 = math.cos(roll) * e2 + math.sin(roll) * e3, -math.sin(roll) * e2 + math.cos(roll) * e3
    rot = np.stack([e1, e2, e3], axis=1)
    j = lambda lo, hi: u(lo, hi) * hs  # noqa: E731
    # Offsets (along e1, e2, e3) and sigmas; the chambers' union at field 0.5 is the heart surface.
    names = ("LV", "RV", "LA", "RA")
    offs = 0.95 * np.array([[j(8, 16), j(-14, -8), j(-14, -6)], [j(0, 8), j(12, 18), j(6, 14)],
                           [j(-44, -36), j(-22, -14), j(-14, -6)], [j(-38, -30), j(-2, 6), j(16, 24)]])
    sig = 0.95 * np.array([[j(40, 47), j(27, 31), j(28, 32)], [j(33, 40), j(15, 19), j(28, 33)],
                          [j(17, 21), j(16, 20), j(22, 27)], [j(19, 23), j(18, 22), j(17, 21)]])
    weights = np.array([1.0, u(0.8, 1.0), u(0.8, 1.0), u(0.8, 1.0)])
    return rot, offs, {"names": names, "sigma": sig, "weight": weights, "az": az, "el": el}


def heart_field(centre: np.ndarray, rot: np.ndarray, offs: np.ndarray, sig: np.ndarray, w: np.ndarray,
                x: np.ndarray, y: np.ndarray, z: np.ndarray, shrink: float = 1.0) -> np.ndarray:
    """Metaball field sum_i w_i exp(-q_i / 2) on the (z, y, x) grid of coordinate vectors (float32)."""
    out = np.zeros((len(z), len(y), len(x)), dtype=np.float32)
    for c_off, s, wi in zip(offs, sig, w):
        c = centre + rot @ c_off
        m = rot @ np.diag(1.0 / (s * shrink) ** 2) @ rot.T
        dx, dy, dz = (x - c[0]).astype(np.float32), (y - c[1]).astype(np.float32), (z - c[2]).astype(np.float32)
        q = (m[0, 0] * dx**2)[None, None, :] + (m[1, 1] * dy**2)[None, :, None] + (m[2, 2] * dz**2)[:, None, None]
        q = q + (2 * m[0, 1] * dy[:, None] * dx[None, :])[None] + (2 * m[0, 2] * dz[:, None] * dx[None, :])[:, None]
        q = q + (2 * m[1, 2] * dz[:, None] * dy[None, :])[:, :, None]
        out += np.float32(wi) * np.exp(-0.5 * q, dtype=np.float32)
    return out


def field_at(heart: dict[str, Any], p: np.ndarray) -> np.ndarray:
    """Heart field at points (N, 3)."""
    out = np.zeros(len(p))
    for c_off, s, wi in zip(heart["offs"], heart["sigma"], heart["weight"]):
        d = (p - (heart["centre"] + heart["rot"] @ c_off)) @ heart["rot"]
        out += wi * np.exp(-0.5 * ((d / s) ** 2).sum(axis=1))
    return out


def cast(heart: dict[str, Any], origin: np.ndarray, dirs: np.ndarray, level: float, reach: float = 120.0):
    """Points where rays origin + t * dirs first drop to field ``level`` (bisection, vectorised)."""
    origin = np.broadcast_to(origin, dirs.shape)
    lo, hi = np.zeros(len(dirs)), np.full(len(dirs), reach)
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        inside = field_at(heart, origin + mid[:, None] * dirs) > level
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    return origin + (0.5 * (lo + hi))[:, None] * dirs


def _wiggle(rng: np.random.Generator, t: np.ndarray, amp: float, n: int = 3) -> np.ndarray:
    out = np.zeros_like(t)
    for _ in range(n):
        out += amp / n * np.sin(2 * math.pi * rng.uniform(1.0, 4.0) * t + rng.uniform(0, 2 * math.pi))
    return out


def _coronaries(rng: np.random.Generator, heart: dict[str, Any], root: np.ndarray, root_r: float,
                hs: float) -> dict[int, Vessel]:
    """LM, LAD, LCX, RCA cast onto the mid-fat level of the heart field (grooves), tortuous and tapering."""
    u = rng.uniform
    c, rot = heart["centre"], heart["rot"]
    e1 = rot[:, 0]
    level = math.sqrt(0.5 * heart["fat_level"])  # geometric mid of the heart surface (0.5) and the pericardium
    ant = unit(np.array([0.0, -1.0, 0.0]) - (np.array([0.0, -1.0, 0.0]) @ e1) * e1)
    left = unit(np.cross(e1, ant))
    if left[0] < 0:
        left = -left
    u_av = heart["u_av"]
    n = 160
    t = np.linspace(0.0, 1.0, n)

    def ring(phi: np.ndarray, uu: np.ndarray) -> np.ndarray:
        dirs = np.cos(phi)[:, None] * ant[None] + np.sin(phi)[:, None] * left[None]
        return cast(heart, c + uu[:, None] * e1[None], dirs, level)

    phi_bif = math.radians(u(25.0, 45.0))
    # LAD: anterior interventricular groove, base -> apex.
    uu = u_av + (heart["u_apex"] * u(0.85, 0.97) - u_av) * t
    lad = ring(phi_bif + math.radians(u(-8, 8)) * t + _wiggle(rng, t, 0.10), uu)
    # LCX: left AV groove backwards.
    phi = phi_bif + 0.1 + (math.radians(u(150.0, 200.0)) - phi_bif) * t
    lcx = ring(phi, u_av + _wiggle(rng, t, 4.0) * hs)
    # RCA: right AV groove to the crux, then down the posterior groove.
    phi = -math.radians(u(5.0, 25.0)) - (math.radians(u(150.0, 185.0))) * t
    rca = ring(phi, u_av + 3.0 * hs + _wiggle(rng, t, 4.0) * hs)
    tp = t[: n // 3]
    pda = ring(np.full(tp.size, phi[-1]) + _wiggle(rng, tp, 0.05),
               u_av + (heart["u_apex"] * u(0.3, 0.6) - u_av) * tp)

    def ostium(target: np.ndarray, lift: float) -> np.ndarray:
        d = target - root
        d[2] = 0.0
        return root + np.array([0.0, 0.0, lift]) + (root_r - 0.5) * unit(d)

    def bridge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        mid = 0.5 * (a + b) + np.array([0.0, 0.0, u(0.0, 4.0)])
        s = np.linspace(0.0, 1.0, 24)[:, None]
        return (1 - s) ** 2 * a + 2 * s * (1 - s) * mid + s**2 * b

    lm = bridge(ostium(lad[0], u(6.0, 14.0)), lad[0])
    rca_all = np.concatenate([bridge(ostium(rca[0], u(2.0, 10.0)), rca[0]), rca[1:], pda[1:]])
    r_lm = u(1.9, 2.5) * math.sqrt(hs)
    out = {}
    for label, pts, r0, r1 in ((1, lm, r_lm, r_lm * 0.95), (2, lad, r_lm * 0.85, r_lm * 0.3),
                               (3, lcx, r_lm * 0.8, r_lm * 0.35), (4, rca_all, r_lm * 0.9, r_lm * 0.35)):
        p = resample(pts, 0.5)
        s = np.linspace(0.0, 1.0, len(p))
        out[label] = Vessel(str(label), p, r0 + (r1 - r0) * s**0.8)
    return out


def _tube(name: str, pts: list, r: np.ndarray | float, step: float = 1.0) -> Vessel:
    p = resample(np.asarray(pts, dtype=float), step)
    rr = np.interp(np.linspace(0, 1, len(p)), np.linspace(0, 1, np.size(r)), np.atleast_1d(r))
    return Vessel(name, p, rr)


def _smooth_curve(ctrl: np.ndarray, n: int = 200) -> np.ndarray:
    """Catmull-Rom-like smooth curve through control points (via cubic interpolation on arc length)."""
    from scipy.interpolate import CubicSpline

    s = np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))))
    cs = CubicSpline(s, ctrl, axis=0, bc_type="natural")
    return cs(np.linspace(0.0, s[-1], n))


def draw_anatomy(rng: np.random.Generator, breast_prob: float) -> Anatomy:
    """Draw a patient: body, heart, vessels, airways, skeleton, abdomen, lung vessels (mm, LPS)."""
    u = rng.uniform
    hu, tex = _draw_hu(rng)
    bs = u(0.85, 1.15)
    hs = bs * u(0.9, 1.1)
    body, spine, sternum = _draw_body(rng, bs)
    heart, hs, apex = _draw_heart(rng, hs, bs, spine, sternum["y"] + sternum["b"] + 1.0)
    aorta, vessels, airways, root, root_r = _draw_great_vessels(rng, heart, hs, bs, spine)
    coronaries = _coronaries(rng, heart, root, root_r, hs)
    dome, ribs, cartilage, breasts = _draw_extras(rng, body, spine, sternum, heart, apex, bs, root, breast_prob)
    lung_vessels = _lung_tree(rng, bs, root, body)
    rot, centre = heart["rot"], heart["centre"]
    valve = {"root": root, "root_r": np.array(root_r),
             "mitral": centre + heart["u_av"] * rot[:, 0] + rot @ np.array([0.0, -14.0, -10.0]) * hs,
             "mitral_axis": rot[:, 0]}
    return Anatomy(hu=hu, tex_sd=tex, body=body, heart=heart, aorta=aorta, vessels=vessels,
                   airways=airways, coronaries=coronaries, spine=spine, ribs=ribs, cartilage=cartilage,
                   sternum=sternum, dome=dome, breasts=breasts, lung_vessels=lung_vessels, valve=valve)


def _draw_body(rng: np.random.Generator, bs: float) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Body outline and wall layers, spine and sternum: sized so the sternum-vertebra depth is realistic."""
    u = rng.uniform
    skin, fat = u(1.5, 2.5), u(4.0, 28.0) * bs
    muscle_ant, post_d = u(6.0, 14.0), u(42.0, 55.0) * bs
    r_vb = u(15.0, 20.0) * bs
    ry = r_vb * u(0.8, 0.92)
    st_b = u(5.0, 7.5)
    depth = u(112.0, 140.0) * bs  # sternum (back surface) to vertebral body (front surface)
    front_wall = skin + fat + muscle_ant + 2 * st_b
    back_wall = skin + 0.7 * fat + post_d + 2 * ry
    b_body = 0.5 * (depth + front_wall + back_wall)
    a_body = b_body * u(1.3, 1.55)
    rib = u(8.0, 11.0)
    body = dict(
        a=a_body, b=b_body, p=u(2.1, 2.8), lobes=[(k, u(0.0, 0.03), u(0, 2 * math.pi)) for k in (2, 3, 4, 5)],
        z_amp=u(0.02, 0.06), z_freq=u(0.004, 0.01), z_phase=u(0, 2 * math.pi), skin=skin,
        fat=fat, fat_lat=u(0.7, 1.5), muscle_ant=muscle_ant, muscle_lat=u(4.0, 9.0),
        muscle_post=max(post_d + ry - rib - 0.3 * fat, 15.0), rib=rib, flat_back=u(0.94, 1.0),
    )
    # Spine and sternum.
    spine = dict(x=u(-4.0, 4.0), y=b_body * body["flat_back"] - skin - 0.7 * fat - post_d - ry, r=r_vb, ry=ry,
                 cortex=u(1.0, 2.0),
                 pitch=u(23.0, 28.0) * bs, disc=u(4.0, 7.0), phase=u(0.0, 1.0), canal=u(6.5, 8.5),
                 tilt=u(-0.1, 0.1))
    spine["canal_y"] = spine["y"] + spine["ry"] + spine["canal"] + u(1.0, 3.0)
    sternum = dict(x=u(-4.0, 4.0), y=-b_body + skin + fat + muscle_ant + st_b, a=u(13.0, 19.0), b=st_b,
                   cortex=u(1.0, 1.6))

    return body, spine, sternum


def _draw_heart(rng: np.random.Generator, hs: float, bs: float, spine: dict[str, float],
                cav_front: float) -> tuple[dict[str, Any], float, np.ndarray]:
    """The metaball heart fitted between sternum and spine; returns (heart, heart scale, apex point)."""
    u = rng.uniform
    # Heart: metaball chambers, fat level, pericardium.
    rot, offs, hinfo = _chambers(rng, hs)
    centre = np.array([u(15.0, 35.0) * bs, 0.0, 0.0])
    heart = dict(centre=centre, rot=rot, offs=offs, sigma=hinfo["sigma"], weight=hinfo["weight"],
                 fat_level=u(0.30, 0.42), peri_width=u(0.04, 0.07), fat_mod=u(0.08, 0.2))
    # Fit the heart between the sternum and the oesophagus / aorta, then push it against the front wall.
    front = cast(heart, centre, np.array([[0.0, -1.0, 0.0]]), heart["fat_level"])[0]
    back = cast(heart, centre, np.array([[0.0, 1.0, 0.0]]), heart["fat_level"])[0]
    room = (spine["y"] - spine["ry"] - u(18.0, 26.0)) - (cav_front + 3.0)
    shrink = float(np.clip(room / max(back[1] - front[1], 1.0), 0.85, 1.0))
    heart["sigma"] = heart["sigma"] * shrink
    heart["offs"] = heart["offs"] * shrink
    hs *= shrink
    probe = cast(heart, centre, np.array([[0.0, -1.0, 0.0]]), heart["fat_level"])[0]
    centre[1] += cav_front + u(1.0, 8.0) - probe[1]
    heart["centre"] = centre
    apex = cast(heart, centre, rot[:, 0][None], 0.5)[0]
    base = cast(heart, centre, -rot[:, 0][None], 0.5)[0]
    heart["u_apex"] = float((apex - centre) @ rot[:, 0])
    heart["u_base"] = float((base - centre) @ rot[:, 0])
    heart["u_av"] = heart["u_base"] * u(0.38, 0.5)
    return heart, hs, apex


def _draw_great_vessels(rng: np.random.Generator, heart: dict[str, Any], hs: float, bs: float,
                        spine: dict[str, float]) -> tuple[Vessel, list[Vessel], list[Vessel], np.ndarray, float]:
    """Aorta (root, ascending, arch, descending), pulmonary arteries, caval veins, oesophagus, airways."""
    u = rng.uniform
    centre, rot, r_vb = heart["centre"], heart["rot"], spine["r"]
    # Aorta: root at the base, ascending, arch over to the left-posterior, descending in front of the spine.
    root = centre + heart["u_base"] * u(0.68, 0.8) * rot[:, 0] + rot @ np.array([0.0, u(-2.0, 6.0), u(2.0, 10.0)]) * hs
    root[2] += u(8.0, 16.0)  # the aortic valve sits in the upper part of the cardiac silhouette
    root_r = u(12.0, 16.0) * hs
    asc_top = root + np.array([u(-22.0, -8.0), u(-18.0, -6.0), u(45.0, 70.0)])
    r_desc = u(10.0, 13.5) * bs
    alpha = math.radians(u(30.0, 60.0))  # left-anterolateral of the vertebral body
    desc_x = spine["x"] + (r_vb + r_desc + u(3.0, 6.0)) * math.sin(alpha)
    desc_y = spine["y"] - (spine["ry"] + r_desc + u(3.0, 6.0)) * math.cos(alpha)
    arch_top = np.array([0.5 * (asc_top[0] + desc_x), 0.5 * (asc_top[1] + desc_y), asc_top[2] + u(15.0, 30.0)])
    ctrl = np.array([root - np.array([0, 0, 8.0]), root + (asc_top - root) * 0.5, asc_top, arch_top,
                     np.array([desc_x, desc_y, asc_top[2] - 5.0]), np.array([desc_x + u(-3, 3), desc_y, root[2] - 60]),
                     np.array([desc_x + u(-6, 2), desc_y + u(-4, 6), root[2] - 260.0])])
    aorta_pts = resample(_smooth_curve(ctrl), 1.5)
    s = np.linspace(0, 1, len(aorta_pts))
    aorta_r = np.interp(s, [0, 0.12, 0.3, 0.5, 1.0], [root_r * 1.05, root_r * 1.1, root_r, r_desc * 1.05, r_desc])
    aorta = Vessel("aorta", aorta_pts, aorta_r)
    # Pulmonary trunk and branches, SVC, trachea and main bronchi, oesophagus.
    rvot = root + np.array([u(14.0, 24.0), u(-16.0, -8.0), u(4.0, 12.0)]) * hs
    bif = rvot + np.array([u(6.0, 14.0), u(14.0, 24.0), u(25.0, 35.0)]) * hs
    pa_r = u(11.0, 15.0) * hs
    vessels = [
        _tube("pa", [rvot, bif], [pa_r, pa_r * 0.95]),
        _tube("rpa", [bif, bif + np.array([-40.0, 12.0, -3.0]) * hs, bif + np.array([-80.0, 22.0, -12.0]) * hs],
              [pa_r * 0.8, 7.0]),
        _tube("lpa", [bif, bif + np.array([28.0, 22.0, -2.0]) * hs, bif + np.array([55.0, 35.0, -15.0]) * hs],
              [pa_r * 0.75, 7.0]),
        _tube("svc", [root + np.array([-28.0 * hs, u(0.0, 10.0), -10.0]),
                      root + np.array([-26.0 * hs, u(0.0, 10.0), 200.0])], u(8.0, 11.0), step=2.0),
        _tube("ivc", [centre + np.array([-40.0 * hs, u(20.0, 30.0), -30.0]),
                      centre + np.array([-38.0 * hs, u(25.0, 35.0), -200.0])], u(10.0, 13.0), step=2.0),
    ]
    eso_x = spine["x"] + u(2.0, 10.0)
    eso_y = spine["y"] - r_vb - u(8.0, 12.0)
    vessels_eso = _tube("esophagus", [[eso_x, eso_y, -250.0], [eso_x - 4.0, eso_y + 2.0, 250.0]], u(6.5, 9.0), 2.0)
    carina = np.array([spine["x"] + u(-6.0, 2.0), eso_y - u(14.0, 20.0), root[2] + u(30.0, 55.0)])
    airways = [
        _tube("trachea", [carina, carina + np.array([u(-5, 5), u(-8, 0), 250.0])], u(8.0, 10.5), 2.0),
        _tube("rmb", [carina, carina + np.array([-25.0, 6.0, -15.0]) * bs,
                      carina + np.array([-50.0, 12.0, -35.0]) * bs],
              [u(6.0, 7.5), 4.5]),
        _tube("lmb", [carina, carina + np.array([28.0, 10.0, -22.0]) * bs, carina + np.array([55.0, 18.0, -45.0]) * bs],
              [u(5.5, 7.0), 4.0]),
    ]
    return aorta, vessels + [vessels_eso], airways, root, root_r


def _draw_extras(rng: np.random.Generator, body: dict[str, Any], spine: dict[str, float], sternum: dict[str, float],
                 heart: dict[str, Any], apex: np.ndarray, bs: float, root: np.ndarray, breast_prob: float):
    """Diaphragm domes, ribs and costal cartilage (with calcification), breasts."""
    u = rng.uniform
    centre, b_body = heart["centre"], body["b"]
    # Diaphragm domes: the right one higher; below them liver (right) and stomach (left).
    z_heart_low = min(apex[2], float(cast(heart, centre, np.array([[0.0, 0.0, -1.0]]), heart["fat_level"])[0][2]))
    dome = dict(z_left=z_heart_low + u(-4.0, 6.0), z_right=z_heart_low + u(8.0, 30.0), x_left=u(40.0, 70.0) * bs,
                x_right=-u(40.0, 70.0) * bs, curv=u(0.0035, 0.006) / bs**2, split=u(-5.0, 25.0),
                gas=u(0.0, 1.0) < 0.6, gas_r=u(10.0, 25.0))
    # Ribs: 3D curves following the chest wall, each dropping from the spine towards the front.
    ribs, cartilage = _ribs(rng, body, spine, sternum, bs, root[2])
    calc_pts, calc_r = [], []
    if u(0.0, 1.0) < 0.65:  # costal cartilage calcification (bone-like, never labelled)
        for _ in range(int(rng.integers(3, 30))):
            c_ = cartilage[int(rng.integers(len(cartilage)))]
            calc_pts.append(c_.pts[int(rng.integers(len(c_.pts)))] + rng.normal(0.0, 1.5, 3))
            calc_r.append(u(1.2, 3.0))
    body["cartilage_calc"] = (np.array(calc_pts).reshape(-1, 3), np.array(calc_r))
    # Breasts (some patients): ellipsoids on the anterior chest wall.
    breasts = []
    if u(0.0, 1.0) < breast_prob:
        size = u(30.0, 70.0)
        for side in (-1.0, 1.0):
            c_b = np.array([side * u(55.0, 80.0) * bs, -b_body + size * 0.35, u(-40.0, 0.0) + centre[2]])
            breasts.append((c_b, np.array([size * u(0.9, 1.2), size * u(0.6, 0.8), size * u(0.8, 1.0)])))
    return dome, ribs, cartilage, breasts


def _ribs(rng: np.random.Generator, body: dict[str, Any], spine: dict[str, float], sternum: dict[str, float],
          bs: float, z_ref: float) -> tuple[list[Vessel], list[Vessel]]:
    """Ribs (bone) and costal cartilages: curves hugging the chest wall, dropping 60-110 mm to the front."""
    u = rng.uniform
    ribs, cart = [], []
    pitch = u(24.0, 30.0) * bs
    drop = u(60.0, 110.0)
    phase = u(0.0, pitch)
    th = np.linspace(0.0, 1.0, 90)
    for level in range(-7, 8):
        z_back = z_ref + phase + level * pitch
        for side in (-1.0, 1.0):
            span = math.radians(u(135.0, 150.0))
            ang = math.radians(78.0) - th * span if side > 0 else math.radians(102.0) + th * span
            big_r, fat, muscle = wall(body, ang)
            rr = big_r - body["skin"] - fat - muscle - body["rib"] * 0.5
            x, y = rr * np.cos(ang), rr * np.sin(ang)
            z = z_back - drop * (0.7 * th + 0.3 * th**2)
            head = np.array([spine["x"] + side * (spine["r"] + 6.0), spine["y"] + 2.0, z_back + 4.0])
            pts = resample(np.concatenate([head[None], np.stack([x, y, z], axis=1)]), 2.0)
            ribs.append(Vessel("rib", pts, np.full(len(pts), u(4.5, 6.0))))
            end = pts[-1]
            target = np.array([sternum["x"] + side * sternum["a"] * 0.9, sternum["y"], end[2] + u(5.0, 25.0)])
            cp = resample(np.stack([end, 0.5 * (end + target) + np.array([0.0, -5.0, 0.0]), target]), 2.0)
            cart.append(Vessel("cartilage", cp, np.full(len(cp), u(4.0, 5.5))))
    return ribs, cart


def _lung_tree(rng: np.random.Generator, bs: float, root: np.ndarray, body: dict[str, Any]):
    """Branching lung vessels from both hila (points every 1.5 mm with radii), clipped to lung later."""
    u = rng.uniform
    pts, rad = [], []
    for side in (-1.0, 1.0):
        hilum = np.array([side * u(45.0, 60.0) * bs, u(0.0, 15.0), root[2] + u(-30.0, 10.0)])
        stack = [(hilum, unit(np.array([side * u(0.3, 1.0), u(-0.7, 0.7), u(-0.9, 0.9)])), u(4.0, 6.0), 0)
                 for _ in range(int(rng.integers(5, 8)))]
        while stack:
            p0, d, r, depth = stack.pop()
            length = u(22.0, 42.0) * (0.88**depth) * bs
            n = max(2, int(length / 1.5))
            tt = np.linspace(0.0, 1.0, n)[:, None]
            bend = unit(d + 0.3 * rng.standard_normal(3))
            seg = p0 + length * (tt * d + 0.5 * tt**2 * (bend - d))
            pts.append(seg)
            rad.append(np.full(n, r))
            if depth < 5 and r > 0.9:
                for _ in range(2):
                    nd = unit(bend + 0.6 * rng.standard_normal(3))
                    nd[0] = side * abs(nd[0])
                    stack.append((seg[-1], nd, r * u(0.62, 0.8), depth + 1))
    return np.concatenate(pts), np.concatenate(rad)


# --- painting ---------------------------------------------------------------------------------------------
def tube_index(g: Grid, pts: np.ndarray, radius: np.ndarray, extra: float = 0.0) -> np.ndarray:
    """Flat indices of voxels within radius + extra of a centre line; radii bucketed so each table stays small."""
    r = np.asarray(radius, dtype=float) + extra
    out = []
    for lo, hi in ((0.0, 1.5), (1.5, 3.0), (3.0, 7.0), (7.0, 1e9)):
        sel = (r > max(lo, 0.0)) & (r <= hi)
        if not sel.any():
            continue
        p, rr = pts[sel], r[sel]
        spacing = float(np.median(np.linalg.norm(np.diff(pts, axis=0), axis=1))) if len(pts) > 1 else 1.0
        step = max(1, int(0.3 * rr.min() / max(spacing, 1e-3)))  # balls overlap enough for a smooth tube
        out.append(ball_index(g, p[::step], rr[::step]))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _put(flat: np.ndarray, idx: np.ndarray, tissue: int, only: tuple[int, ...] | None = None) -> None:
    if only is not None and idx.size:
        idx = idx[np.isin(flat[idx], only)]
    flat[idx] = tissue


def wall(b: dict[str, Any], th: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body radius (skin surface), subcutaneous fat and muscle thickness at polar angle th (atan2(y, x))."""
    c, s = np.cos(th), np.sin(th)
    bb = np.where(s > 0, b["b"] * b["flat_back"], b["b"])
    big_r = (np.abs(c / b["a"]) ** b["p"] + np.abs(s / bb) ** b["p"]) ** (-1.0 / b["p"])
    for k, amp, ph in b["lobes"]:
        big_r = big_r * (1 + amp * np.cos(k * th + ph))
    fat = b["fat"] * (1 + (b["fat_lat"] - 1) * c**2) * (1 + 0.3 * np.where(s > 0, s, 0))
    muscle = b["muscle_lat"] * c**2 + np.where(s < 0, b["muscle_ant"], b["muscle_post"]) * s**2
    return big_r, fat, muscle


def _body_layers(g: Grid, an: Anatomy) -> np.ndarray:
    """Skin, subcutaneous fat, muscle, chest wall and the thoracic cavity (as lung), z-varying outline."""
    b = an.body
    x, y, z = g.x, g.y, g.z
    th = np.arctan2(y[:, None], x[None, :])
    r = np.hypot(y[:, None], x[None, :])
    big_r, fat, muscle = wall(b, th)
    zs = (1 + b["z_amp"] * np.sin(2 * math.pi * b["z_freq"] * z + b["z_phase"])).astype(np.float32)
    big_r, fat, muscle, r = (a.astype(np.float32) for a in (big_r, fat, muscle, r))
    depth = big_r[None] * zs[:, None, None] - r[None]  # mm inside the skin, along the ray from the centre
    t = np.full(g.shape, AIR, dtype=np.uint8)
    for d0, tis in ((0.0, SKIN), (b["skin"], FAT)):
        t[depth >= d0] = tis
    t[depth >= (b["skin"] + fat)[None]] = MUSCLE
    cav = depth >= (b["skin"] + fat + muscle + b["rib"])[None]
    sp = an.spine
    ny_ = ((y - sp["y"] - sp["ry"]) / (2.1 * sp["ry"]))[:, None]
    notch = ((x - sp["x"]) / (sp["r"] + 12.0))[None, :] ** 2 + ny_**2 < 1.0
    st = an.sternum
    ns = ((x - st["x"]) / (st["a"] + 25.0))[None, :] ** 2 + ((y - st["y"]) / (st["b"] + 4.0))[:, None] ** 2 < 1.0
    cav &= ~(notch | ns)[None]
    t[cav] = LUNG
    return t


def _mediastinum(t: np.ndarray, g: Grid, an: Anatomy) -> None:
    sp, st = an.spine, an.sternum
    y0, y1 = st["y"], sp["y"]
    yy = (g.y - 0.5 * (y0 + y1)) / (0.5 * (y1 - y0))
    w = 5.0 + 11.0 * np.sqrt(np.clip(1 - yy**2, 0, 1))
    m = (np.abs(g.x[None, :] - sp["x"] - 4.0) < w[:, None]) & (np.abs(yy) < 1)[:, None]
    t[(t == LUNG) & m[None]] = MED_FAT


def _heart(t: np.ndarray, g: Grid, an: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Paint the heart from its metaball field on a coarse grid; return the heart region (bool)."""
    h = an.heart
    region = np.zeros(g.shape, dtype=bool)
    c = h["centre"]
    # The field is below the heart region level (>= ~0.1) beyond 2.6 sigma of every chamber: box them so.
    centres = c[None] + h["offs"] @ h["rot"].T
    reach = np.stack([2.6 * np.sqrt((h["rot"] ** 2) @ sg**2) for sg in h["sigma"]])  # ellipsoid bounding boxes
    box = g.box((centres - reach).min(axis=0), (centres + reach).max(axis=0))
    if box is None:
        return region
    f = max(1, int(round(1.2 / g.ps)))
    nyb, nxb = box[1].stop - box[1].start, box[2].stop - box[2].start
    xc = g.x[box[2].start] + g.ps * f * np.arange(nxb // f + 2)
    yc = g.y[box[1].start] + g.ps * f * np.arange(nyb // f + 2)
    zc = g.z[box[0]]
    field_c = heart_field(c, h["rot"], h["offs"], h["sigma"], h["weight"], xc, yc, zc)
    blood_c = heart_field(c, h["rot"], h["offs"], h["sigma"] * np.array([[0.62], [0.6], [0.72], [0.75]]),
                          h["weight"], xc, yc, zc)
    f2 = max(1, int(round(5.0 / (f * g.ps))))  # the modulation is smooth: draw it on a 5 mm grid
    mod = rng.standard_normal((field_c.shape[0], field_c.shape[1] // f2 + 2, field_c.shape[2] // f2 + 2))
    mod = ndi.gaussian_filter(mod.astype(np.float32), (1.5, 15.0 / (f * f2 * g.ps), 15.0 / (f * f2 * g.ps)))
    mod = upsample(mod / max(float(mod.std()), 1e-6), f2, field_c.shape[1], field_c.shape[2])
    level_c = np.float32(h["fat_level"]) * (1 + np.float32(h["fat_mod"]) * mod)
    # Compare on the coarse grid as ratios, so only one upsampled array per quantity is needed.
    fld = upsample(field_c, f, nyb, nxb)
    lev = upsample(level_c, f, nyb, nxb)
    bld = upsample(blood_c, f, nyb, nxb)
    tb = t[box]
    sac = fld > lev * 0.78
    tb[sac & ((tb == LUNG) | (tb == MUSCLE) | (tb == FAT))] = MED_FAT
    tb[fld > lev * (1 - h["peri_width"])] = PERICARDIUM
    tb[fld > lev] = EPI_FAT
    tb[fld > 0.5] = MYOCARDIUM
    tb[(bld > 0.5) & (fld > 0.5)] = BLOOD
    region[box] = fld > lev * 0.7
    return region


def _abdomen(t: np.ndarray, g: Grid, an: Anatomy) -> None:
    d = an.dome
    x, y, z = g.x[None, :], g.y[:, None], g.z[:, None, None]
    zl = d["z_left"] - d["curv"] * ((x - d["x_left"]) ** 2 + (y - 20.0) ** 2)
    zr = d["z_right"] - d["curv"] * ((x - d["x_right"]) ** 2 + (y - 20.0) ** 2)
    below = z < np.maximum(zl, zr)[None]
    soft = (t == LUNG) | (t == MED_FAT) | (t == LUNG_VESSEL)
    right = (x < d["split"])[None]
    t[below & soft & right] = LIVER
    t[below & soft & ~right] = STOMACH
    if d["gas"]:
        gr = d["gas_r"]
        gas = ((x - d["x_left"]) ** 2 + (y + 10.0) ** 2)[None] + (z - (d["z_left"] - gr - 6.0)) ** 2 < gr**2
        t[gas & (t == STOMACH)] = GAS


def _breasts(t: np.ndarray, g: Grid, an: Anatomy) -> None:
    for c, semi in an.breasts:
        box = g.box(c - semi, c + semi)
        if box is None:
            continue
        dx = ((g.x[box[2]] - c[0]) / semi[0])[None, None, :]
        dy = ((g.y[box[1]] - c[1]) / semi[1])[None, :, None]
        dz = ((g.z[box[0]] - c[2]) / semi[2])[:, None, None]
        q = dx**2 + dy**2 + dz**2
        tb = t[box]
        outside = (tb == AIR) | (tb == SKIN) | (tb == FAT)
        tb[(q < 1.0) & (tb == AIR)] = SKIN
        tb[(q < (1 - 2.5 / semi.min()) ** 2) & outside] = FAT
        tb[(q < 0.35) & (dy < 0.2) & outside] = BREAST


def _spine(t: np.ndarray, g: Grid, an: Anatomy) -> None:
    sp = an.spine
    box = g.box(np.array([sp["x"] - 60.0, sp["y"] - sp["ry"] - 3.0, g.z0]),
                np.array([sp["x"] + 60.0, sp["canal_y"] + 60.0, g.z[-1]]))
    if box is None:
        return
    dx = (g.x[box[2]] - sp["x"])[None, :]
    y = g.y[box[1]][:, None]
    body = (dx / sp["r"]) ** 2 + ((y - sp["y"]) / sp["ry"]) ** 2 < 1
    core = (dx / (sp["r"] - sp["cortex"])) ** 2 + ((y - sp["y"]) / (sp["ry"] - sp["cortex"])) ** 2 < 1
    yc = y - sp["canal_y"]
    rc = np.hypot(dx, yc)
    canal = rc < sp["canal"]
    pedicle = (np.abs(np.abs(dx) - sp["canal"] - 2.5) < 3.5) & (y > sp["y"]) & (yc < 0)
    lamina = (rc < sp["canal"] + 3.5) & ~canal & (yc >= -1.0)
    transverse = ((np.abs(dx) - sp["canal"] - 11.0) / 8.5) ** 2 + ((yc + 1.0) / 3.5) ** 2 < 1
    for k, z in enumerate(g.z[box[0]]):
        tb = t[box[0].start + k, box[1], box[2]]
        q = ((z / sp["pitch"]) - sp["phase"]) % 1.0
        dd = min(q, 1 - q) * sp["pitch"]
        if dd < sp["disc"] / 2:
            tb[body] = DISC
        else:
            tb[body] = CORTICAL
            tb[core] = CANCELLOUS
        spin_len = 18.0 + 22.0 * q  # the spinous process slopes down: longer in the lower part of a level
        spinous = (np.abs(dx) < 2.0 + 1.5 * (yc < sp["canal"] + 8)) & (yc > sp["canal"]) & (yc < sp["canal"] + spin_len)
        post = lamina | (spinous if q > 0.25 else False) | (pedicle if 0.25 < q < 0.8 else False)
        post = post | (transverse if 0.4 < q < 0.65 else False)
        tb[post] = CORTICAL
        tb[canal] = CANAL


def _sternum(t: np.ndarray, g: Grid, an: Anatomy) -> None:
    st = an.sternum
    z_xiph = an.dome["z_left"] + 5.0
    z_man = an.valve["root"][2] + 45.0
    box = g.box(np.array([st["x"] - 2 * st["a"], st["y"] - 2 * st["b"], g.z0]),
                np.array([st["x"] + 2 * st["a"], st["y"] + 2 * st["b"], g.z[-1]]))
    if box is None:
        return
    dx, dy = (g.x[box[2]] - st["x"])[None, :], (g.y[box[1]] - st["y"])[:, None]
    for k, z in enumerate(g.z[box[0]]):
        if z < z_xiph - 20.0:
            continue
        a = st["a"] * (0.4 if z < z_xiph else 1.35 if z > z_man else 1.0)
        bb = st["b"] * (0.6 if z < z_xiph else 1.1 if z > z_man else 1.0)
        tb = t[box[0].start + k, box[1], box[2]]
        tb[(dx / a) ** 2 + (dy / bb) ** 2 < 1] = CORTICAL
        tb[(dx / (a - st["cortex"])) ** 2 + (dy / (bb - st["cortex"])) ** 2 < 1] = CANCELLOUS


def paint_anatomy(g: Grid, an: Anatomy, rng: np.random.Generator, table: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes (Z, Y, X, uint8) and the heart region (bool: pericardial sac + margin, coronaries, root)."""
    t = _body_layers(g, an)
    _mediastinum(t, g, an)
    region = _heart(t, g, an, rng)
    _abdomen(t, g, an)
    _breasts(t, g, an)
    flat = t.reshape(-1)
    lunglike = (LUNG, LUNG_VESSEL, MED_FAT, MUSCLE, FAT)
    for v in [an.aorta] + an.vessels:
        _put(flat, tube_index(g, v.pts, v.radius, 4.0), MED_FAT, only=(LUNG, LUNG_VESSEL))
    for v in an.airways:
        _put(flat, tube_index(g, v.pts, v.radius, 2.5), MED_FAT, only=(LUNG, LUNG_VESSEL))
    # The aortic root sits in the fat of the heart's base (where the LM and RCA leave it).
    n_root = max(2, int(25.0 / 1.5))
    _put(flat, tube_index(g, an.aorta.pts[:n_root], an.aorta.radius[:n_root], 4.0), EPI_FAT,
         only=(MYOCARDIUM, BLOOD, PERICARDIUM))
    _put(flat, tube_index(g, an.aorta.pts, an.aorta.radius), VESSEL_WALL)
    _put(flat, tube_index(g, an.aorta.pts, an.aorta.radius, -1.8), BLOOD)
    for v in an.vessels:
        _put(flat, tube_index(g, v.pts, v.radius), ESOPHAGUS if v.name == "esophagus" else BLOOD)
    for v in an.airways:
        _put(flat, tube_index(g, v.pts, v.radius, 1.6), AIRWAY_WALL)
        _put(flat, tube_index(g, v.pts, v.radius), AIRWAY)
    # Coronary arteries in their fat, then the heart region around them and around the aortic root.
    pts = np.concatenate([v.pts for v in an.coronaries.values()])
    rad = np.concatenate([v.radius for v in an.coronaries.values()])
    heartish = (MYOCARDIUM, BLOOD, PERICARDIUM, EPI_FAT, MED_FAT, LUNG, LUNG_VESSEL)
    _put(flat, tube_index(g, pts, rad, 2.0), EPI_FAT, only=heartish)
    _put(flat, tube_index(g, pts, rad), CORONARY)
    hr = region.reshape(-1)
    hr[tube_index(g, pts[::4], rad[::4], 5.0)] = True
    hr[tube_index(g, an.aorta.pts[:n_root], an.aorta.radius[:n_root], 5.0)] = True
    # Lung vessels (only in lung), skeleton, cartilage, table.
    _put(flat, tube_index(g, *an.lung_vessels), LUNG_VESSEL, only=(LUNG,))
    _spine(t, g, an)
    _sternum(t, g, an)
    rib_pts = np.concatenate([r.pts for r in an.ribs])
    rib_r = np.concatenate([r.radius for r in an.ribs])
    _put(flat, tube_index(g, rib_pts, rib_r), CORTICAL, only=lunglike + (SKIN, BREAST))
    _put(flat, tube_index(g, rib_pts, rib_r, -1.4), CANCELLOUS, only=(CORTICAL,))
    cp = np.concatenate([c.pts for c in an.cartilage])
    cr = np.concatenate([c.radius for c in an.cartilage])
    _put(flat, tube_index(g, cp, cr), CARTILAGE, only=lunglike + (SKIN, BREAST, CORTICAL, CANCELLOUS))
    calc = an.body.get("cartilage_calc")
    if calc is not None and len(calc[0]):
        _put(flat, tube_index(g, calc[0], calc[1]), CARTILAGE_CALC, only=(CARTILAGE,))
    if table:
        yb = an.body["b"] * an.body["flat_back"]
        top = yb + 4.0 + 0.0012 * g.x[None, :] ** 2
        slab = (g.y[:, None] > top) & (g.y[:, None] < top + 9.0) & (np.abs(g.x) < 230.0)[None, :]
        sub = t[:, slab]
        sub[sub == AIR] = TABLE
        t[:, slab] = sub
    return t, region
