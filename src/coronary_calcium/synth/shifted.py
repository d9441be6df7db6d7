"""The "shifted" synthetic family: an independently parameterised generator for transfer tests (issue 14).

It is never used for training or threshold choice by default: it exists to test a model trained on the default
family (`synth/phantom.py`) on scans that differ in everything a real scanner and a real body vary:

- anatomy (`synth/shifted_anatomy.py`, its own code): lobulated metaball heart with a pericardium and an
  epicardial fat layer of varying thickness, tapering tortuous coronaries cast into the grooves, aortic root /
  arch / descending aorta, spine with posterior elements, ribs as 3D curves, sternum, costal cartilage with
  calcification, liver dome / stomach with gas, breasts in some patients, a body outline varying along z;
- texture: every tissue carries a smooth random heterogeneity (fat, myocardium, lung parenchyma), lung vessel trees;
- field of view: gated 180-250 mm centred on the heart, 3 mm (sometimes 2.5 mm) slices; non-gated 330-450 mm
  full chest at 5 mm slices, with motion blur of the coronary calcium;
- reconstruction kernel: soft / standard / sharp, each with its own PSF (sharp: edge overshoot) and noise power
  spectrum (band-pass filtered white noise), 12-35 HU SD;
- lesions: heavy-tailed: many 1-5 mm^2 specks of 130-250 HU, crescent plaques, large multi-slice plaques of
  100-1,500 mm^3 above 1,000 HU in heavy-burden patients, diffuse calcium along a segment, ostial left-main calcium
  touching aortic calcium; hard negatives: aortic wall, aortic valve, mitral annulus, costal cartilage.

Ground truth is defined on the final image: a voxel >= 130 HU takes the label of the lesion that dominates it;
a 2D component >= 130 HU holding labelled voxels is labelled whole (its unlabelled voxels take the nearest
label: ``label_grown_voxels``), and an unlabelled, bone-free component of >= 0.9 mm^2 touching the heart region
(noise) is flattened to 129 HU (``despeckled_voxels``). The truth JSON is the project's `score_scan` of the labels.
``generation.ostial_lm`` says an ostial left-main plaque was drawn next to ostial aortic calcium (it touches it in
most scans; in thick non-gated slices the two can end up a voxel apart).

The manifest has the default schema without a ``generator`` block (the schema allows only the default generator
there); the shifted config is written into its description, and `generate_shifted_dataset` regenerates the set.
"""

from __future__ import annotations

import dataclasses
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from coronary_calcium.errors import InputError
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import AORTIC, CORONARY_LABELS, LABEL_NAMES, LAD, LCX, LM, RCA, VALVE
from coronary_calcium.report.files import atomic_folder
from coronary_calcium.synth import shifted_anatomy as sa

GENERATOR_NAME = "coronary_calcium.synth.shifted"
THRESHOLD_HU = 130.0
REGION_HU = 10.0  # a lesion claims a voxel where it adds at least this much (and more than any other lesion)
DESPECKLE_AREA_MM2 = 0.9
HU_MIN, HU_MAX = -1024.0, 3071.0
CATEGORY_LABELS = ("0", "1-10", "11-100", "101-400", ">400")
CATEGORY_UPPER = (0.0, 10.0, 100.0, 400.0, math.inf)
KERNELS = ("soft", "standard", "sharp")
# PSF FWHM (mm), edge overshoot, noise grain sigma (mm), low-frequency removal (sigma mm, fraction) per kernel.
KERNEL_PARAMS = {
    "soft": ((1.1, 1.5), (0.0, 0.0), (0.8, 1.1), (3.0, 4.0), (0.4, 0.6)),
    "standard": ((0.8, 1.1), (0.0, 0.15), (0.5, 0.7), (2.5, 3.5), (0.6, 0.8)),
    "sharp": ((0.5, 0.75), (0.3, 0.6), (0.25, 0.4), (2.0, 3.0), (0.7, 0.9)),
}
_S2D = np.zeros((3, 3, 3), dtype=bool)
_S2D[1] = True


@dataclass(frozen=True)
class ShiftedConfig:
    """Parameters of the shifted family (ranges are (min, max), drawn uniformly per patient)."""

    seed: int = 0
    n_patients: int = 12
    name: str = "synthetic-shifted"
    matrix: int = 512
    gated_fraction: float = 0.6
    gated_fov_mm: tuple[float, float] = (180.0, 250.0)
    full_fov_mm: tuple[float, float] = (330.0, 450.0)
    gated_increments_mm: tuple[float, ...] = (3.0, 3.0, 3.0, 2.5)
    """Gated slice increments to choose from (uniformly; repeat a value to weight it)."""
    full_increment_mm: float = 5.0
    max_slices: int | None = None
    """Crop the scan to at most this many slices around the heart (small test volumes); None = full coverage."""
    noise_sd_hu: tuple[float, float] = (12.0, 35.0)
    kernels: tuple[str, ...] = KERNELS
    kvp: float = 120.0
    table: bool = True
    breast_prob: float = 0.45
    category_deck: tuple[int, ...] = (0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
    """Risk categories dealt (shuffled) to each block of len(deck) patients: >= 25 % calcium-free by default."""
    max_score: float = 3000.0
    aortic_prob: float = 0.6
    valve_prob: float = 0.45
    ostial_prob: float = 0.35
    diffuse_prob: float = 0.4
    split_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShiftedConfig:
        if not isinstance(data, dict):
            raise InputError("shifted config", f"must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError("shifted config", f"unknown keys {unknown} (known: {sorted(known)})")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})

    def replace(self, **changes: Any) -> ShiftedConfig:
        return dataclasses.replace(self, **changes)


def _validate(c: ShiftedConfig) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def pair(name: str, v: Any) -> None:
        numbers = isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
        if not (numbers and 0 <= v[0] <= v[1]):
            raise InputError(name, f"must be a (min, max) pair of non-negative numbers, got {v!r}")

    for name in ("seed", "n_patients", "matrix"):
        if not is_int(getattr(c, name)) or getattr(c, name) < (1 if name != "seed" else 0):
            raise InputError(name, f"must be a {'non-negative' if name == 'seed' else 'positive'} integer")
    if c.matrix < 64:
        raise InputError("matrix", f"must be >= 64, got {c.matrix}")
    for name in ("gated_fov_mm", "full_fov_mm", "noise_sd_hu"):
        pair(name, getattr(c, name))
    for name in ("gated_fraction", "breast_prob", "aortic_prob", "valve_prob", "ostial_prob", "diffuse_prob"):
        if not isinstance(getattr(c, name), (int, float)) or not 0 <= getattr(c, name) <= 1:
            raise InputError(name, f"must be a number in [0, 1], got {getattr(c, name)!r}")
    if not c.gated_increments_mm or not all(isinstance(v, (int, float)) and v > 0 for v in c.gated_increments_mm):
        raise InputError("gated_increments_mm", "must be one or more positive numbers")
    if not isinstance(c.full_increment_mm, (int, float)) or c.full_increment_mm <= 0:
        raise InputError("full_increment_mm", "must be a positive number")
    if c.max_slices is not None and (not is_int(c.max_slices) or c.max_slices < 1):
        raise InputError("max_slices", f"must be None or a positive integer, got {c.max_slices!r}")
    if not c.kernels or any(k not in KERNELS for k in c.kernels):
        raise InputError("kernels", f"must be one or more of {list(KERNELS)}, got {c.kernels!r}")
    if not c.category_deck or any(not is_int(k) or not 0 <= k <= 4 for k in c.category_deck):
        raise InputError("category_deck", "must be one or more category indices 0-4")
    if not isinstance(c.max_score, (int, float)) or c.max_score < 600:
        raise InputError("max_score", f"must be a number >= 600, got {c.max_score!r}")
    if float(c.kvp) != 120.0:
        raise InputError("kvp", "the shifted family's HU and the 130 HU rule assume 120 kVp")
    if len(c.split_fractions) != 3 or abs(sum(c.split_fractions) - 1.0) > 1e-6 or min(c.split_fractions) < 0:
        raise InputError("split_fractions", f"must be 3 non-negative shares summing to 1, got {c.split_fractions!r}")


def patient_id(index: int) -> str:
    return f"SHF{index:04d}"


def target_category(config: ShiftedConfig, index: int) -> int:
    """Category of patient ``index``: dealt from the deck, shuffled per block of len(deck) patients."""
    deck = np.asarray(config.category_deck)
    block = np.random.default_rng([config.seed, 7_777, index // len(deck)]).permutation(deck)
    return int(block[index % len(deck)])


# --- acquisition ------------------------------------------------------------------------------------------
def _draw_grid(rng: np.random.Generator, config: ShiftedConfig, an: sa.Anatomy) -> tuple[sa.Grid, bool]:
    gated = bool(rng.random() < config.gated_fraction)
    n = config.matrix
    h = an.heart_centre
    if gated:
        fov = rng.uniform(*config.gated_fov_mm)
        cx, cy = h[0] - 8.0 + rng.uniform(-12.0, 12.0), h[1] + rng.uniform(-12.0, 12.0)
        dz = float(config.gated_increments_mm[int(rng.integers(len(config.gated_increments_mm)))])
        z_lo = an.dome["z_left"] - rng.uniform(12.0, 28.0)
        z_hi = an.coronaries[LM].pts[0][2] + rng.uniform(25.0, 45.0)
    else:
        lo, hi = config.full_fov_mm
        fov = min(max(rng.uniform(lo, hi), 2 * an.body["a"] * 1.05 + 10.0), hi)
        cx, cy = rng.uniform(-8.0, 8.0), rng.uniform(-5.0, 20.0)
        dz = float(config.full_increment_mm)
        z_lo = an.dome["z_left"] - rng.uniform(30.0, 60.0)
        z_hi = float(an.aorta.pts[:, 2].max()) + rng.uniform(20.0, 60.0)
    nz = max(4, int(math.ceil((z_hi - z_lo) / dz)))
    zc = 0.5 * (z_lo + z_hi)
    if config.max_slices is not None and nz > config.max_slices:
        nz = config.max_slices
        zc = float(np.mean([an.coronaries[k].pts[:, 2].mean() for k in CORONARY_LABELS]))
    ps = fov / n
    return sa.Grid(nz, n, n, dz, ps, cx - ps * (n - 1) / 2, cy - ps * (n - 1) / 2, zc - dz * (nz - 1) / 2), gated


def _kernel(rng: np.random.Generator, config: ShiftedConfig) -> dict[str, Any]:
    name = config.kernels[int(rng.integers(len(config.kernels)))]
    fwhm, over, grain, low_sigma, low_frac = KERNEL_PARAMS[name]
    return {"name": name, "fwhm_mm": rng.uniform(*fwhm), "overshoot": rng.uniform(*over),
            "grain_mm": rng.uniform(*grain), "low_sigma_mm": rng.uniform(*low_sigma),
            "low_frac": rng.uniform(*low_frac), "noise_sd": _noise_sd(rng, config, name)}


def _noise_sd(rng: np.random.Generator, config: ShiftedConfig, kernel: str) -> float:
    """Noise SD within the configured range, its lower / middle / upper part for soft / standard / sharp kernels."""
    lo, hi = config.noise_sd_hu
    part = {"soft": (0.0, 0.55), "standard": (0.2, 0.8), "sharp": (0.45, 1.0)}[kernel]
    return float(rng.uniform(lo + part[0] * (hi - lo), lo + part[1] * (hi - lo)))


def _psf(a: np.ndarray, g: sa.Grid, k: dict[str, Any], mode: str = "nearest") -> np.ndarray:
    """In-plane PSF of the kernel: Gaussian blur, plus an unsharp-mask edge overshoot for sharp kernels."""
    s = k["fwhm_mm"] / 2.3548 / g.ps
    out = ndi.gaussian_filter(a, (0, s, s), mode=mode, truncate=3.0)
    if k["overshoot"] > 0:
        out += np.float32(k["overshoot"]) * (out - _lowpass(out, 1.2 / g.ps, mode))
    return out


def _lowpass(a: np.ndarray, sigma_px: float, mode: str = "nearest") -> np.ndarray:
    """In-plane Gaussian low-pass; wide ones are computed at half resolution and upsampled (same result to ~1 %)."""
    if sigma_px < 3.0 or min(a.shape[1:]) < 16:
        return ndi.gaussian_filter(a, (0, sigma_px, sigma_px), mode=mode, truncate=2.5)
    half = ndi.gaussian_filter(a[:, ::2, ::2], (0, sigma_px / 2, sigma_px / 2), mode=mode, truncate=2.5)
    half = np.concatenate([half, half[:, -1:]], axis=1)
    half = np.concatenate([half, half[:, :, -1:]], axis=2)
    return sa.upsample(half, 2, a.shape[1], a.shape[2])


def _noise(rng: np.random.Generator, g: sa.Grid, k: dict[str, Any]) -> np.ndarray:
    """Band-pass filtered white noise: the kernel's noise power spectrum, rescaled to its SD."""
    w = rng.standard_normal(g.shape, dtype=np.float32)
    s1, s2 = k["grain_mm"] / g.ps, k["low_sigma_mm"] / g.ps
    n = ndi.gaussian_filter(w, (0, s1, s1), truncate=3.0)
    n -= np.float32(k["low_frac"]) * _lowpass(n, s2)
    n *= np.float32(k["noise_sd"] / max(float(n[:: max(1, g.nz // 8)].std()), 1e-6))
    return n


# --- lesions ----------------------------------------------------------------------------------------------
@dataclass
class Lesion:
    """A calcification on a centre-line segment: the wall band [r_in, r_out] mm over an arc, soft-edged."""

    label: int
    kind: str
    pts: np.ndarray
    r_in: float
    r_out: float
    phi0: float
    span: float
    density: float
    box: tuple[slice, slice, slice] | None = None
    patch: np.ndarray | None = None
    estimated_agatston: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"label": int(self.label), "kind": self.kind, "artery": LABEL_NAMES[self.label],
                "centre_mm": [round(float(v), 2) for v in self.pts.mean(axis=0)],
                "length_mm": round(float(np.linalg.norm(np.diff(self.pts, axis=0), axis=1).sum()), 2),
                "wall_band_mm": [round(self.r_in, 2), round(self.r_out, 2)],
                "arc_deg": round(math.degrees(self.span), 1),
                "density_hu": round(self.density, 1), "estimated_agatston": round(self.estimated_agatston, 3)}


def _frames(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.gradient(pts, axis=0) if len(pts) > 1 else np.array([[0.0, 0.0, 1.0]])
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    ref = np.where(np.abs(t[:, 2:3]) > 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0]]))
    n = np.cross(t, ref)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    return t, n, np.cross(t, n)


def render(les: Lesion, g: sa.Grid, k: dict[str, Any], motion_mm: float = 0.0) -> bool:
    """Sample the lesion's density on its box (averaged over the slice thickness), blur it like the image."""
    p = les.pts[:: max(1, int(math.ceil(len(les.pts) / 24)))] if len(les.pts) > 1 else les.pts
    t, nv, bv = _frames(p)
    seg = np.concatenate(([0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))))
    length = seg[-1]
    # Box: the band's own extent (sampled over its arc), not the whole vessel cross-section.
    ang = les.phi0 + np.linspace(-0.5, 0.5, 9) * les.span
    ring = np.cos(ang)[None, :, None] * nv[:, None, :] + np.sin(ang)[None, :, None] * bv[:, None, :]
    band = np.concatenate([p[:, None, :] + r * ring for r in (les.r_in, les.r_out)], axis=1).reshape(-1, 3)
    band = np.concatenate([band, p])
    half = np.array([0.0, 0.0, g.dz / 2]) + 1.0
    pad = int(math.ceil((k["fwhm_mm"] + motion_mm * 2 + 1.5) / g.ps)) + 1
    box = g.box(band.min(axis=0) - half, band.max(axis=0) + half, pad_px=pad)
    if box is None:
        return False
    x, y, z = g.x[box[2]], g.y[box[1]], g.z[box[0]]
    n_sub = max(4, int(math.ceil(g.dz / 0.5)))
    out = np.zeros((len(z), len(y), len(x)), dtype=np.float32)
    X, Y = np.meshgrid(x, y)
    xy = np.stack([X.ravel(), Y.ravel()], axis=1).astype(np.float32)
    p, t, nv, bv = (a.astype(np.float32) for a in (p, t, nv, bv))
    for kz, zz in enumerate(z):
        acc = np.zeros(len(xy), dtype=np.float32)
        for zs in zz + ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * g.dz:
            q = np.column_stack([xy, np.full(len(xy), zs, dtype=np.float32)])
            d2 = ((q[:, None, :] - p[None]) ** 2).sum(axis=2)
            j = np.argmin(d2, axis=1)
            d = q - p[j]
            along = (d * t[j]).sum(axis=1)
            perp = d - along[:, None] * t[j]
            rho = np.linalg.norm(perp, axis=1)
            phi = np.arctan2((perp * bv[j]).sum(axis=1), (perp * nv[j]).sum(axis=1))
            s = seg[j] + along
            f = np.clip((rho - les.r_in) / 0.5 + 0.5, 0, 1) * np.clip((les.r_out - rho) / 0.5 + 0.5, 0, 1)
            if les.span < 2 * math.pi - 1e-6:
                dphi = np.abs((phi - les.phi0 + math.pi) % (2 * math.pi) - math.pi)
                f *= np.clip((les.span / 2 - dphi) * np.maximum(rho, 0.5) / 0.5 + 0.5, 0, 1)
            f *= np.clip((length - s) / 0.5 + 0.5, 0, 1) * np.clip(s / 0.5 + 0.5, 0, 1)
            acc += f.astype(np.float32)
        out[kz] = (acc / n_sub).reshape(len(y), len(x))
    out *= np.float32(les.density)
    out = _psf(out, g, k, mode="constant")
    if motion_mm > 0:
        ang = float(np.random.default_rng(int(les.density * 1000) % 2**31).uniform(0, math.pi))
        out = ndi.gaussian_filter(out, (0, motion_mm * abs(math.sin(ang)) / g.ps + 0.01,
                                        motion_mm * abs(math.cos(ang)) / g.ps + 0.01), mode="constant")
    les.box, les.patch = box, out
    return bool(out.max() > REGION_HU)


def _segment(v: sa.Vessel, j0: int, length_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Points and radii of ``v`` from index j0 over ``length_mm`` (at least one point)."""
    step = float(np.linalg.norm(v.pts[1] - v.pts[0])) if len(v.pts) > 1 else 1.0
    j1 = min(len(v.pts), j0 + max(1, int(round(length_mm / max(step, 1e-6)))) + 1)
    return v.pts[j0:j1], v.radius[j0:j1]


def _plaque(rng: np.random.Generator, label: int, v: sa.Vessel, kind: str, j0: int | None = None,
            boost: float = 1.0) -> Lesion:
    """A coronary lesion of a kind: 'speck', 'small', 'large' (multi-slice, > 1,000 HU) or 'diffuse' (one bead).

    ``boost`` > 1 makes small kinds thicker, longer and denser (after lesions vanished in thick, blurred slices)."""
    u = rng.uniform
    length = {"speck": u(0.5, 2.0), "small": u(1.5, 6.0), "large": u(8.0, 22.0), "diffuse": u(1.5, 4.0)}[kind]
    if j0 is None:
        j0 = int(rng.integers(0, max(1, len(v.pts) - int(length / 0.5) - 1)))
    if kind != "large":
        length *= boost
    pts, r = _segment(v, j0, length)
    rv = float(r.mean())
    thick = {"speck": u(0.5, 1.1), "small": u(0.8, 2.0), "large": u(1.5, 3.0), "diffuse": u(0.6, 1.4)}[kind]
    span = {"speck": u(0.8, 2.2), "small": u(1.0, 3.5), "large": u(2.5, 2 * math.pi), "diffuse": u(0.8, 2.5)}[kind]
    dens = {"speck": u(230.0, 480.0), "small": u(300.0, 1000.0), "large": u(1300.0, 1800.0),
            "diffuse": u(250.0, 650.0)}[kind]
    if kind != "large":
        thick, dens = thick * boost**0.5, min(dens * boost, 1200.0)
    r_in = max(0.0, rv - u(0.2, 0.6))
    return Lesion(label, kind, pts, r_in, r_in + thick, u(-math.pi, math.pi), min(span, 2 * math.pi), dens)


def _box_score(hu: np.ndarray, region: np.ndarray, g: sa.Grid) -> float:
    from coronary_calcium.scoring.agatston import find_lesions

    if not region.any():
        return 0.0
    return float(sum(les.agatston for les in find_lesions(np.rint(hu), (g.dz, g.ps, g.ps), mask=region)))


def _kinds(rng: np.random.Generator, category: int, config: ShiftedConfig) -> list[str]:
    """Plan of lesion kinds for a category: heavy-tailed (many specks, a few large plaques when heavy)."""
    if category == 0:
        return []
    plan = ["speck"] * int(rng.integers(2, 6) if category == 1 else rng.integers(4, 13))
    if category >= 2:
        plan += ["small"] * int(rng.integers(1, 4 + 2 * category))
    if category >= 3 and rng.random() < config.diffuse_prob + 0.2:
        plan += ["diffuse"]
    if category == 4:
        plan = ["large"] * int(rng.integers(1, 4)) + plan
    rng.shuffle(plan[1 if category == 4 else 0:])
    return plan


def _add_coronary(rng: np.random.Generator, config: ShiftedConfig, an: sa.Anatomy, g: sa.Grid, category: int,
                  hu: np.ndarray, k: dict[str, Any], motion: float, ostial: bool) -> tuple[list[Lesion], float, float]:
    """Add coronary lesions to ``hu`` until the score reaches a target inside the category (checked on the image).

    ``ostial``: start with a left-main plaque at the ostium (touching the ostial aortic calcium drawn before)."""
    if category == 0:
        return [], 0.0, 0.0
    lo = (1.5, 13.0, 130.0, 520.0)[category - 1]
    hi = (8.0, 80.0, 320.0, config.max_score)[category - 1]
    target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    cap = CATEGORY_UPPER[category] / 1.08 if category < 4 else config.max_score * 1.5
    arteries = {lab: v for lab, v in an.coronaries.items() if _inside(v.pts, g).sum() > 8}
    if not arteries:
        return [], target, 0.0
    w = np.array([{LM: 0.1, LAD: 0.4, LCX: 0.2, RCA: 0.3}[a] for a in arteries])
    labs = list(arteries)
    region = np.zeros(g.shape, dtype=bool)
    plan = _kinds(rng, category, config)
    out: list[Lesion] = []
    total, boost = 0.0, 1.0
    if ostial and LM in arteries:
        plan = ["ostial"] + plan
    for _ in range(200):
        if not plan and total >= target:
            break
        gap = target - total
        kind = plan.pop(0) if plan else ("speck" if category == 1 or gap < 8 else "large" if gap > 400 else "small")
        lab = LM if kind == "ostial" else labs[int(rng.choice(len(labs), p=w / w.sum()))]
        v = arteries[lab]
        usable = np.flatnonzero(_inside(v.pts, g))
        if kind == "ostial":
            les = [_plaque(rng, LM, v, "small", j0=0)]
        elif kind == "diffuse":
            j = int(rng.choice(usable))
            beads = range(int(rng.integers(4, 10)))  # diffuse: a chain of beads along 12-30 mm of one segment
            les = [_plaque(rng, lab, v, "diffuse", j0=min(j + 6 * i, len(v.pts) - 2), boost=boost) for i in beads]
        else:
            les = [_plaque(rng, lab, v, kind, j0=int(rng.choice(usable)), boost=boost)]
        if kind == "large" and total + 300 > cap:
            continue
        for le in les:
            if not render(le, g, k, motion):
                continue
            v0, r0 = hu[le.box], region[le.box]
            r1 = r0 | (le.patch >= REGION_HU)
            est = _box_score(v0 + le.patch, r1, g) - _box_score(v0, r0, g)
            if est <= 0:  # too faint or too small to score on this image: grow the next ones
                boost = min(boost * 1.2, 3.0)
                continue
            if total + est > cap:
                boost = max(boost * 0.8, 0.6)
                continue
            boost = max(1.0, boost * 0.95)
            le.estimated_agatston = est
            v0 += le.patch
            r0 |= r1
            total += est
            out.append(le)
    return out, target, total


def _inside(pts: np.ndarray, g: sa.Grid, margin: float = 4.0) -> np.ndarray:
    return ((pts[:, 2] > g.z0 + margin) & (pts[:, 2] < g.z[-1] - margin) & (pts[:, 0] > g.x0 + margin)
            & (pts[:, 0] < g.x[-1] - margin) & (pts[:, 1] > g.y0 + margin) & (pts[:, 1] < g.y[-1] - margin))


def _noncoronary(rng: np.random.Generator, config: ShiftedConfig, an: sa.Anatomy, g: sa.Grid, category: int,
                 ostial: bool) -> list[Lesion]:
    """Hard negatives: aortic wall plaques (5), aortic valve and mitral annulus calcification (6)."""
    u = rng.uniform
    boost = 0.5 + 0.25 * category
    out: list[Lesion] = []
    ao = an.aorta
    inside = np.flatnonzero(_inside(ao.pts, g, 8.0))
    if inside.size and rng.random() < min(1.0, config.aortic_prob * boost):
        for _ in range(int(rng.integers(1, 4 + 2 * category))):
            pts, r = _segment(ao, int(rng.choice(inside)), u(3.0, 15.0))
            rr = float(r.mean())
            out.append(Lesion(AORTIC, "aortic wall", pts, rr - u(2.5, 3.5), rr - u(0.8, 1.5), u(-math.pi, math.pi),
                              u(0.3, 1.8), u(300.0, 1500.0)))
    if ostial:  # aortic calcium at the left-main ostium, touching the ostial LM plaque
        o = an.coronaries[LM].pts[0]
        j = int(np.argmin(np.linalg.norm(ao.pts[:40] - o, axis=1)))
        pts, r = _segment(ao, max(j - 4, 0), 8.0)
        t, nv, bv = _frames(pts)
        d = o - pts[len(pts) // 2]
        phi = math.atan2(float(d @ bv[len(pts) // 2]), float(d @ nv[len(pts) // 2]))
        out.append(Lesion(AORTIC, "ostial aortic", pts, float(r.mean()) - 2.5, float(r.mean()) + 0.3, phi, 1.2,
                          u(500.0, 1200.0)))
    if rng.random() < min(1.0, config.valve_prob * boost):
        root, rr = an.valve["root"], float(an.valve["root_r"])
        axis = sa.unit(ao.pts[3] - ao.pts[0])
        if rng.random() < 0.6:
            base = np.stack([root - axis * 6.0, root - axis * 2.0])
            for _ in range(int(rng.integers(1, 4))):
                out.append(Lesion(VALVE, "aortic valve", base, rr * u(0.2, 0.5), rr * u(0.6, 0.85),
                                  u(-math.pi, math.pi), u(0.4, 1.2), u(300.0, 1600.0)))
        if rng.random() < 0.6:
            m, ax = an.valve["mitral"], an.valve["mitral_axis"]
            e = sa.unit(np.cross(ax, np.array([0.0, 0.0, 1.0])))
            f = np.cross(ax, e)
            rad = u(13.0, 18.0)
            ang = u(0, 2 * math.pi) + np.linspace(0.0, u(1.5, 4.2), 40)
            ring = m + rad * (np.cos(ang)[:, None] * e + np.sin(ang)[:, None] * f)
            out.append(Lesion(VALVE, "mitral annulus", ring, 0.0, u(1.5, 3.0), 0.0, 2 * math.pi, u(300.0, 1400.0)))
    return out


# --- ground truth -----------------------------------------------------------------------------------------
def _labels(hu: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """Each voxel >= 130 HU takes the label of the lesion adding the most there (at least REGION_HU)."""
    labels = np.zeros(hu.shape, dtype=np.uint8)
    best = np.zeros(hu.shape, dtype=np.float32)
    for le in lesions:
        b, lb = best[le.box], labels[le.box]
        win = (le.patch >= REGION_HU) & (le.patch > b)
        b[win] = le.patch[win]
        lb[win] = le.label
    labels[hu < THRESHOLD_HU] = 0
    return labels


def _complete(hu: np.ndarray, labels: np.ndarray, tissue: np.ndarray, region: np.ndarray,
              g: sa.Grid) -> tuple[int, int]:
    """Label whole 2D components that hold labels; flatten unlabelled bone-free ones >= 0.9 mm^2 in the heart
    region to 129 HU. Returns (label_grown_voxels, despeckled_voxels)."""
    above = hu >= THRESHOLD_HU
    comp, n = ndi.label(above, structure=_S2D)
    if n == 0:
        return 0, 0
    idx = comp.ravel()
    sel = np.flatnonzero(idx)
    c = idx[sel]
    size = np.bincount(c, minlength=n + 1)
    lab_n = np.bincount(c, weights=labels.ravel()[sel] > 0, minlength=n + 1)
    bone_n = np.bincount(c, weights=np.isin(tissue.ravel()[sel], sa.BONE_TISSUES), minlength=n + 1)
    reg_n = np.bincount(c, weights=region.ravel()[sel], minlength=n + 1)
    grow = np.flatnonzero((lab_n > 0) & (lab_n < size) & (bone_n == 0))
    grown = 0
    objects = ndi.find_objects(comp)
    for ci in grow:
        if ci == 0:
            continue
        box = objects[ci - 1]
        m = comp[box] == ci
        lb = np.where(m, labels[box], 0)
        _, ind = ndi.distance_transform_edt(lb == 0, return_indices=True)
        fill = m & (lb == 0)
        lb_full = labels[box]
        lb_full[fill] = lb[tuple(i[fill] for i in ind)]
        grown += int(fill.sum())
    speck = (lab_n == 0) & (bone_n == 0) & (reg_n > 0) & (size * g.ps**2 >= DESPECKLE_AREA_MM2)
    speck[0] = False
    flat_sel = sel[speck[c]]
    hu.reshape(-1)[flat_sel] = THRESHOLD_HU - 1.0
    return grown, int(flat_sel.size)


def _truth(pid: str, volume: CTVolume, labels: np.ndarray, lesions: list[Lesion],
           generation: dict[str, Any]) -> dict[str, Any]:
    from coronary_calcium.scoring.agatston import find_lesions, score_scan

    score = score_scan(volume.hu, volume.spacing, labels=labels)
    sd = score.to_dict()
    positive = sorted({int(z) for les in score.lesions for z in les.slices})
    non_coronary = {}
    for lab in (AORTIC, VALVE):
        m = labels == lab
        per_slice = m.sum(axis=(1, 2))
        nc = find_lesions(volume.hu, volume.spacing, mask=m) if m.any() else []
        non_coronary[LABEL_NAMES[lab]] = {"voxels": int(per_slice.sum()),
                                          "slices": [int(k) for k in np.flatnonzero(per_slice)],
                                          "slices_1mm2": sorted({int(z) for les in nc for z in les.slices})}
    return {
        "patient_id": pid, "generator": GENERATOR_NAME, "agatston": sd["agatston"],
        "risk_category": score.categories["5-class"], "categories": sd["categories"], "per_artery": sd["per_artery"],
        "n_lesions": sd["n_lesions"], "lesions": sd["lesions"], "scoring": sd["config"],
        "n_slices": int(volume.shape[0]), "positive_slices": positive, "n_positive_slices": len(positive),
        "non_coronary": non_coronary, "plaques": [le.to_dict() for le in lesions], "generation": generation,
    }


def _image(rng: np.random.Generator, g: sa.Grid, an: sa.Anatomy, tissue: np.ndarray, k: dict[str, Any]) -> np.ndarray:
    """Tissue HU with texture, blurred by the kernel's PSF, plus the kernel's noise (float32)."""
    tex = sa.smooth_field(rng, g, rng.uniform(2.5, 6.0))
    hu = np.empty(g.shape, dtype=np.float32)
    for z in range(g.nz):
        np.take(an.hu, tissue[z], out=hu[z])
        hu[z] += np.take(an.tex_sd, tissue[z]) * tex[z]
    del tex
    hu = _psf(hu, g, k)
    hu += _noise(rng, g, k)
    return hu


def generate_shifted_patient(config: ShiftedConfig, index: int, seed: int | None = None
                             ) -> tuple[CTVolume, np.ndarray, dict[str, Any]]:
    """Patient ``index`` of the shifted family: (volume, labels uint8, truth dict); deterministic in seed, index.

    ``seed`` overrides ``config.seed``. The truth's ``generation`` block also carries the heart region size and
    the counts of grown label voxels and flattened noise voxels.
    """
    case = generate_shifted_case(config, index, seed)
    return case.volume, case.labels, case.truth


@dataclass
class ShiftedCase:
    """A generated patient with the masks its ground truth was checked against."""

    volume: CTVolume
    labels: np.ndarray
    truth: dict[str, Any]
    tissue: np.ndarray
    heart_region: np.ndarray

    @property
    def bone(self) -> np.ndarray:
        """Bone before blur: cortical, cancellous and calcified costal cartilage."""
        return np.isin(self.tissue, sa.BONE_TISSUES)


def generate_shifted_case(config: ShiftedConfig, index: int, seed: int | None = None) -> ShiftedCase:
    """`generate_shifted_patient` plus the tissue classes and the heart region (for checks and tests)."""
    if not isinstance(config, ShiftedConfig):
        raise InputError("config", f"must be a ShiftedConfig, got {type(config).__name__}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise InputError("index", f"must be a non-negative integer, got {index!r}")
    seed = config.seed if seed is None else int(seed)
    if seed != config.seed:
        config = config.replace(seed=seed)
    index = int(index)
    rng = np.random.default_rng([seed, 1_414, index])
    an = sa.draw_anatomy(rng, config.breast_prob)
    g, gated = _draw_grid(rng, config, an)
    k = _kernel(rng, config)
    tissue, region = sa.paint_anatomy(g, an, rng, config.table and not gated)
    hu = _image(rng, g, an, tissue, k)
    category = target_category(config, index)
    ostial = category >= 2 and rng.random() < config.ostial_prob
    motion = 0.0 if gated else float(rng.uniform(0.5, 1.5))
    lesions = [le for le in _noncoronary(rng, config, an, g, category, ostial) if render(le, g, k)]
    for le in lesions:
        hu[le.box] += le.patch
    coronary, target, estimate = _add_coronary(rng, config, an, g, category, hu, k, motion, ostial)
    lesions += coronary
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    np.rint(hu, out=hu)
    labels = _labels(hu, lesions)
    grown, flattened = _complete(hu, labels, tissue, region, g)
    pid = patient_id(index)
    z_offset = float(rng.uniform(-300.0, -50.0))
    spacing = (float(g.dz), float(g.ps), float(g.ps))
    origin = (float(g.x0), float(g.y0), float(g.z0 + z_offset))
    meta = {"patient_id": pid, "modality": "CT", "kvp": float(config.kvp), "source": GENERATOR_NAME,
            "series_description": ("CaScore gated " if gated else "Chest non-gated ") + k["name"], "index": index}
    vol = CTVolume(hu=hu, spacing=spacing, origin=origin, direction=np.eye(3), slice_thickness=float(g.dz), meta=meta)
    generation = {
        "generator": GENERATOR_NAME, "seed": seed, "index": index, "gated": gated, "shape": list(g.shape),
        "spacing_mm": list(spacing), "origin_mm": list(origin), "fov_mm": round(g.ps * g.nx, 2),
        "kernel": {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in k.items()},
        "motion_blur_mm": round(motion, 3), "breasts": len(an.breasts) > 0,
        "heart_centre_mm": [round(float(v), 2) for v in an.heart_centre + np.array([0.0, 0.0, z_offset])],
        "epicardial_fat_level": round(float(an.heart["fat_level"]), 4),
        "target_category": CATEGORY_LABELS[category], "target_agatston": round(target, 3),
        "estimated_agatston": round(estimate, 3), "ostial_lm": bool(ostial),
        "heart_region_voxels": int(region.sum()), "label_grown_voxels": grown, "despeckled_voxels": flattened,
    }
    truth = _truth(pid, vol, labels, lesions, generation)
    return ShiftedCase(vol, labels, truth, tissue, region)


# --- data set ---------------------------------------------------------------------------------------------
def _uid(config: ShiftedConfig, pid: str, what: str) -> str:
    import hashlib

    params = {k: v for k, v in config.to_dict().items() if k not in ("n_patients", "name", "split_fractions")}
    text = json.dumps([GENERATOR_NAME, params, pid, what], sort_keys=True)
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


def write_shifted_patient(volume: CTVolume, labels: np.ndarray, truth: dict[str, Any], folder: str | Path,
                          config: ShiftedConfig) -> dict[str, Path]:
    """Write one patient like the default family: dicom/, image.nii.gz, labels.nii.gz, calcium.xml, truth.json."""
    from coronary_calcium.io.coca import write_coca_xml
    from coronary_calcium.io.dicom import write_dicom_series
    from coronary_calcium.io.images import write_nifti
    from coronary_calcium.synth.dataset import _dumps

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pid = truth["patient_id"]
    gated = bool(truth["generation"]["gated"])
    write_dicom_series(volume, folder / "dicom", patient_id=pid, study_uid=_uid(config, pid, "study"),
                       series_uid=_uid(config, pid, "series"),
                       series_description=str(volume.meta.get("series_description", "")), kvp=float(config.kvp),
                       rescale_intercept=-1024.0, slice_thickness=volume.slice_thickness,
                       instance_order="descending" if gated else "ascending")
    paths = {"dicom": folder / "dicom",
             "image": write_nifti(volume.hu.astype(np.int16), volume, folder / "image.nii.gz"),
             "labels": write_nifti(labels, volume, folder / "labels.nii.gz"),
             "coca_xml": write_coca_xml(labels, volume, folder / "calcium.xml")}
    (folder / "truth.json").write_text(_dumps(truth))
    paths["truth"] = folder / "truth.json"
    return paths


def _make(config_dict: dict[str, Any], index: int, root: str) -> dict[str, Any]:
    config = ShiftedConfig.from_dict(config_dict)
    vol, labels, truth = generate_shifted_patient(config, index)
    write_shifted_patient(vol, labels, truth, Path(root) / truth["patient_id"], config)
    return {"patient_id": truth["patient_id"], "index": index, "risk_category": truth["risk_category"],
            "agatston": truth["agatston"], "n_slices": truth["n_slices"],
            "n_positive_slices": truth["n_positive_slices"], "gated": truth["generation"]["gated"]}


def build_shifted_manifest(config: ShiftedConfig, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """data_manifest.json content (the default schema; no 'generator' block: the schema names only the default)."""
    from coronary_calcium.synth.dataset import assign_splits

    summaries = sorted(summaries, key=lambda s: s["index"])
    splits = assign_splits([s["risk_category"] for s in summaries], config.split_fractions, config.seed)
    counts = {c: sum(s["risk_category"] == c for s in summaries) for c in CATEGORY_LABELS}
    n_gated = sum(bool(s["gated"]) for s in summaries)
    description = (
        f"Shifted synthetic family ({GENERATOR_NAME}, seed {config.seed}; an independently written generator for "
        f"transfer tests, never for training or threshold choice): {len(summaries)} patients ({n_gated} gated, "
        f"{len(summaries) - n_gated} non-gated), {sum(s['n_slices'] for s in summaries)} slices, "
        f"{sum(s['n_positive_slices'] for s in summaries)} positive. Risk categories: "
        + ", ".join(f"{c}: {n}" for c, n in counts.items())
        + f". Config: {json.dumps(config.to_dict(), sort_keys=True)}."
    )
    scans = [{"patient_id": s["patient_id"], "scan_id": s["patient_id"], "image": f"{s['patient_id']}/dicom",
              "reference": {"labels": f"{s['patient_id']}/labels.nii.gz", "scheme": "project",
                            "coca_xml": f"{s['patient_id']}/calcium.xml"},
              "truth": f"{s['patient_id']}/truth.json", "split": sp} for s, sp in zip(summaries, splits)]
    return {"version": 1, "name": config.name, "description": description, "data_root": ".", "scans": scans}


def generate_shifted_dataset(out_dir: str | Path, n_patients: int = 12, seed: int = 0, workers: int = 1,
                             overwrite: bool = False, config: ShiftedConfig | dict[str, Any] | None = None) -> Path:
    """Generate ``n_patients`` shifted patients into ``out_dir`` with its data_manifest.json; return that path.

    ``config`` (optional) sets every other parameter; ``n_patients`` and ``seed`` override its fields. The folder
    is built beside ``out_dir`` and renamed into place; a non-empty ``out_dir`` is replaced only with ``overwrite``.
    """
    from coronary_calcium.synth.dataset import MANIFEST_NAME, _check_out_dir, _dumps

    if isinstance(config, dict):
        config = ShiftedConfig.from_dict(config)
    config = (config or ShiftedConfig()).replace(n_patients=n_patients, seed=seed)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError("workers", f"must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir).absolute()
    _check_out_dir(out_dir, bool(overwrite))
    with atomic_folder(out_dir, replace=True) as tmp:
        cfg = config.to_dict()
        if workers == 1:
            summaries = [_make(cfg, i, str(tmp)) for i in range(config.n_patients)]
        else:
            with ProcessPoolExecutor(max_workers=min(workers, config.n_patients)) as pool:
                summaries = list(pool.map(_make, [cfg] * config.n_patients, range(config.n_patients),
                                          [str(tmp)] * config.n_patients))
        (tmp / MANIFEST_NAME).write_text(_dumps(build_shifted_manifest(config, summaries)))
    return out_dir / MANIFEST_NAME
