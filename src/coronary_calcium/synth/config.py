"""`SynthConfig`: every parameter of the synthetic calcium-score CT generator, validated in one place.

Ranges are ``(min, max)`` pairs drawn uniformly per patient unless a field says otherwise. Every patient
draws from ``np.random.default_rng([seed, index])``, so a patient depends only on the seed, its index and
this config, never on how many patients are generated or in which order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from coronary_calcium.errors import InputError

# 5-class risk categories (van Velzen et al. 2020): (label, lower, upper) with lower < score <= upper.
CATEGORY_LABELS = ("0", "1-10", "11-100", "101-400", ">400")
CATEGORY_BOUNDS = ((0.0, 0.0), (0.0, 10.0), (10.0, 100.0), (100.0, 400.0), (400.0, math.inf))


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic data set; defaults give the seed paper's scale (~3,000 slices, ~17 % positive).

    Build from JSON with :meth:`from_dict` (unknown keys are an InputError); every invalid value raises
    :class:`~coronary_calcium.errors.InputError` at construction, before anything is generated or written.
    """

    seed: int = 0
    """Master seed; patient ``i`` draws from ``np.random.default_rng([seed, i])``."""
    n_patients: int = 60
    """Number of patients (one scan each) in a data set."""
    name: str = "synthetic-default"
    """Data set name written to the manifest."""

    # --- acquisition -------------------------------------------------------------------------------------
    matrix: int = 512
    """In-plane matrix size (rows = columns); pixel spacing = field of view / matrix."""
    gated_fraction: float = 0.75
    """Share of ECG-gated calcium-score scans (small FOV centred on the heart); the rest use a full-chest FOV."""
    gated_fov_mm: tuple[float, float] = (200.0, 250.0)
    """Field of view of gated scans (0.39-0.49 mm pixels at 512): the body is cut off at the edges."""
    full_fov_mm: tuple[float, float] = (330.0, 410.0)
    """Field of view of full-chest scans (0.64-0.80 mm pixels at 512); widened to fit the body when needed."""
    slice_increments_mm: tuple[float, ...] = (2.5, 3.0)
    """Slice increments of gated scans to choose from (slice thickness = increment: contiguous slices)."""
    full_slice_increments_mm: tuple[float, ...] = (5.0,)
    """Slice increments of full-chest (non-gated) scans: public non-gated chest CT is mostly 5 mm."""
    n_slices: tuple[int, int] = (40, 64)
    """Allowed number of slices; the scan covers the heart plus margins, clipped to this range."""
    noise_sd_hu: tuple[float, float] = (10.0, 30.0)
    """Image noise SD in HU (white noise filtered by the reconstruction kernel, rescaled to this SD)."""
    psf_fwhm_mm: tuple[float, float] = (0.7, 1.1)
    """In-plane FWHM of the reconstruction kernel's point spread function; it also colours the noise."""
    kvp: float = 120.0
    """Tube voltage written to DICOM; the generator's HU values and the 130 HU rule assume 120 kVp."""
    table: bool = True
    """Draw the patient table under the body (visible in full-chest FOVs)."""

    # --- anatomy ------------------------------------------------------------------------------------------
    body_scale: tuple[float, float] = (0.88, 1.12)
    """Body size factor (1 = 320 mm wide, 230 mm deep chest); the heart scales with it (plus its own jitter)."""
    subcutaneous_fat_mm: tuple[float, float] = (5.0, 30.0)
    """Subcutaneous fat thickness."""
    epicardial_fat_mm: tuple[float, float] = (2.0, 9.0)
    """Epicardial fat thickness between myocardium and pericardium (the coronary arteries run in it; in lean patients
    the arteries bulge the pericardium, a few mm from lung)."""

    # --- coronary calcium burden --------------------------------------------------------------------------
    category_weights: tuple[float, float, float, float, float] = (0.15, 0.1, 0.2, 0.2, 0.35)
    """Relative frequency of the target risk category 0 / 1-10 / 11-100 / 101-400 / >400 (Agatston)."""
    category_cycle: int = 20
    """Categories are dealt from shuffled blocks of this many patients (block b = patients b*n..b*n+n-1,
    shuffled by ``default_rng([seed, 2**32 - 1, b])``) holding each category in proportion to the weights,
    so every block of consecutive patients covers every category with a non-zero share; 1 = i.i.d. draws."""
    category_margin: float = 1.25
    """Target scores stay this factor inside their category's bounds, so noise rarely changes the category."""
    max_score: float = 2500.0
    """Upper bound of target Agatston scores for the >400 category (drawn log-uniformly from 500)."""
    max_plaques: int = 40
    """Maximum number of coronary plaques per patient."""
    artery_weights: tuple[float, float, float, float] = (0.08, 0.42, 0.2, 0.3)
    """Relative frequency of plaques in LM / LAD / LCX / RCA."""
    plaque_diameter_mm: tuple[float, float] = (1.0, 6.0)
    """Plaque size across the vessel (FWHM of its density profile); length along the vessel is 1.2-3x this (at most
    15 mm)."""
    plaque_density_hu: tuple[float, float] = (250.0, 1400.0)
    """Plaque core HU above the vessel before partial volume; observed peaks span ~130 to >1000 HU."""
    large_plaque_prob: float = 0.5
    """Probability that a patient of category 101-400 or >400 has a large multi-slice plaque (15-30 mm along
    the vessel, 4.5-8 mm across, 1000-2200 HU core: the 100-1,500 mm^3 plaques of heavy real burdens); a >400
    patient who has one has a second with the same probability."""
    ostial_lm_prob: float = 0.15
    """Probability that a patient with coronary calcium has left-main calcium at the ostium touching calcium of
    the aortic root wall (one 2D component labelled LM and aortic)."""

    # --- non-coronary calcium and distractors --------------------------------------------------------------
    aortic_calcification_prob: float = 0.45
    """Probability of aortic wall calcification (label 5) in a patient of median burden (scales with burden)."""
    valve_calcification_prob: float = 0.35
    """Probability of aortic valve / mitral annulus calcification (label 6), scaled like the aortic one."""

    # --- data set -------------------------------------------------------------------------------------------
    split_fractions: tuple[float, float, float] = (0.65, 0.15, 0.20)
    """Train / validation / test shares of patients, stratified by measured risk category."""

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples as lists)."""
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Build from a dict such as :meth:`to_dict` gives; missing keys take defaults, unknown keys are an error."""
        if not isinstance(data, dict):
            raise InputError("synth config", f"must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError("synth config", f"unknown keys {unknown} (known: {sorted(known)})")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> SynthConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # --- derived values used by the generator ------------------------------------------------------------
    def target_range(self, category: int) -> tuple[float, float]:
        """Range of target Agatston scores for a category index (0 -> (0, 0)); margins keep noise from moving it."""
        if category == 0:
            return (0.0, 0.0)
        lo, hi = CATEGORY_BOUNDS[category]
        m = self.category_margin
        lo = max(lo, 1.0) * m
        hi = self.max_score if math.isinf(hi) else hi / m
        return (lo, hi)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_int(name: str, v: Any, lo: int, hi: int | None = None) -> None:
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise InputError(name, f"must be an integer {bound}, got {v!r}")


def _check_prob(name: str, v: Any) -> None:
    if not _is_num(v) or not 0.0 <= v <= 1.0:
        raise InputError(name, f"must be a number in [0, 1], got {v!r}")


def _check_range(name: str, v: Any, *, positive: bool = False, min_value: float | None = None) -> None:
    if not isinstance(v, tuple) or len(v) != 2 or not all(_is_num(x) for x in v):
        raise InputError(name, f"must be a (min, max) pair of finite numbers, got {v!r}")
    if v[0] > v[1]:
        raise InputError(name, f"min {v[0]} exceeds max {v[1]}")
    if positive and v[0] <= 0:
        raise InputError(name, f"must be positive, got {v!r}")
    if min_value is not None and v[0] < min_value:
        raise InputError(name, f"must be >= {min_value}, got {v!r}")


def _check_weights(name: str, v: Any, n: int) -> None:
    if not isinstance(v, tuple) or len(v) != n or not all(_is_num(x) and x >= 0 for x in v):
        raise InputError(name, f"must be {n} non-negative numbers, got {v!r}")
    if sum(v) <= 0:
        raise InputError(name, f"must not all be zero, got {v!r}")


def max_plaque_agatston(config: SynthConfig) -> float:
    """Generous upper bound of one plaque's Agatston score (largest, densest plaque; used for feasibility)."""
    d = config.plaque_diameter_mm[1]
    # The >= 130 HU region of a dense plaque reaches ~1.4x its FWHM; it spans its length plus a slice.
    area = math.pi / 4 * (1.4 * d) ** 2
    dz = min(config.slice_increments_mm)
    n_slices = 1 + math.ceil(1.4 * 3.0 * d / dz)
    return area * 4 * n_slices * dz / 3.0


def _validate(c: SynthConfig) -> None:
    """Raise InputError naming the first field of ``c`` that is invalid or that makes a wanted category unreachable."""
    _check_int("seed", c.seed, 0)
    _check_int("n_patients", c.n_patients, 1, 100_000)
    if not isinstance(c.name, str) or not c.name.strip():
        raise InputError("name", f"must be a non-empty string, got {c.name!r}")
    _check_field_of_view(c)
    _check_prob("large_plaque_prob", c.large_plaque_prob)
    _check_prob("ostial_lm_prob", c.ostial_lm_prob)
    _check_image(c)
    _check_body(c)
    _check_burden(c)
    _check_burden_reachable(c)


def _check_increments(name: str, v: Any) -> None:
    """Slice increments: a non-empty tuple of positive numbers."""
    if not isinstance(v, tuple) or not v or not all(_is_num(x) and x > 0 for x in v):
        raise InputError(name, f"must be one or more positive numbers, got {v!r}")


def _check_field_of_view(c: SynthConfig) -> None:
    """Matrix, gated share, fields of view and slice increments."""
    _check_int("matrix", c.matrix, 32, 2048)
    _check_prob("gated_fraction", c.gated_fraction)
    _check_range("gated_fov_mm", c.gated_fov_mm, positive=True)
    _check_range("full_fov_mm", c.full_fov_mm, positive=True)
    _check_increments("slice_increments_mm", c.slice_increments_mm)
    _check_increments("full_slice_increments_mm", c.full_slice_increments_mm)


def _check_image(c: SynthConfig) -> None:
    """Slice count, noise, blur, tube voltage and the table."""
    if not isinstance(c.n_slices, tuple) or len(c.n_slices) != 2 or not all(_is_int(x) for x in c.n_slices):
        raise InputError("n_slices", f"must be a (min, max) pair of integers, got {c.n_slices!r}")
    if not 1 <= c.n_slices[0] <= c.n_slices[1] <= 1000:
        raise InputError("n_slices", f"must satisfy 1 <= min <= max <= 1000, got {c.n_slices!r}")
    _check_range("noise_sd_hu", c.noise_sd_hu, min_value=0.0)
    _check_range("psf_fwhm_mm", c.psf_fwhm_mm, positive=True)
    if not _is_num(c.kvp) or c.kvp <= 0:
        raise InputError("kvp", f"must be a positive number, got {c.kvp!r}")
    if not isinstance(c.table, bool):
        raise InputError("table", f"must be true or false, got {c.table!r}")


def _check_body(c: SynthConfig) -> None:
    """Body size and the subcutaneous and epicardial fat."""
    _check_range("body_scale", c.body_scale, positive=True)
    if not (0.6 <= c.body_scale[0] and c.body_scale[1] <= 1.5):
        raise InputError("body_scale", f"must lie within [0.6, 1.5], got {c.body_scale!r}")
    _check_range("subcutaneous_fat_mm", c.subcutaneous_fat_mm, min_value=0.0)
    if c.subcutaneous_fat_mm[1] > 60:
        raise InputError("subcutaneous_fat_mm", f"must be <= 60 mm, got {c.subcutaneous_fat_mm!r}")
    _check_range("epicardial_fat_mm", c.epicardial_fat_mm, min_value=2.0)
    if c.epicardial_fat_mm[1] > 25:
        raise InputError("epicardial_fat_mm", f"must be <= 25 mm, got {c.epicardial_fat_mm!r}")


def _check_burden(c: SynthConfig) -> None:
    """Categories, plaques, non-coronary calcium and the split fractions, each on its own."""
    _check_weights("category_weights", c.category_weights, 5)
    _check_int("category_cycle", c.category_cycle, 1, 10_000)
    if not _is_num(c.category_margin) or not 1.0 <= c.category_margin <= 3.0:
        raise InputError("category_margin", f"must be a number in [1, 3], got {c.category_margin!r}")
    if not _is_num(c.max_score) or c.max_score <= 0:
        raise InputError("max_score", f"must be a positive number, got {c.max_score!r}")
    _check_int("max_plaques", c.max_plaques, 0, 1000)
    _check_weights("artery_weights", c.artery_weights, 4)
    _check_range("plaque_diameter_mm", c.plaque_diameter_mm, positive=True)
    _check_range("plaque_density_hu", c.plaque_density_hu, positive=True)
    _check_prob("aortic_calcification_prob", c.aortic_calcification_prob)
    _check_prob("valve_calcification_prob", c.valve_calcification_prob)
    _check_weights("split_fractions", c.split_fractions, 3)
    if abs(sum(c.split_fractions) - 1.0) > 1e-6:
        raise InputError("split_fractions", f"must sum to 1, got {c.split_fractions!r} (sum {sum(c.split_fractions)})")


def _check_burden_reachable(c: SynthConfig) -> None:
    """Every category with a non-zero weight must be reachable with these plaques."""
    wanted = [k for k in range(1, 5) if c.category_weights[k] > 0]
    if not wanted:
        return
    if c.max_plaques < 1:
        raise InputError("max_plaques", "is 0 but category_weights ask for patients with coronary calcium")
    if c.plaque_density_hu[1] < 200.0:
        raise InputError(
            "plaque_density_hu", f"max {c.plaque_density_hu[1]} HU is too faint to reach 130 HU after partial volume"
        )
    if c.plaque_diameter_mm[1] < 1.2:
        raise InputError("plaque_diameter_mm", f"max {c.plaque_diameter_mm[1]} mm cannot make a lesion of 1 mm^2")
    if c.plaque_diameter_mm[0] > 4.0 and c.category_weights[1] > 0:
        raise InputError("plaque_diameter_mm", f"min {c.plaque_diameter_mm[0]} mm is too large for the 1-10 category")
    for k in wanted:
        lo, hi = c.target_range(k)
        if lo > hi:
            item = "max_score" if k == 4 else "category_margin"
            raise InputError(item, f"leaves no target score for category {CATEGORY_LABELS[k]} ({lo:g} > {hi:g})")
        reachable = c.max_plaques * max_plaque_agatston(c)
        if reachable < lo:
            raise InputError(
                "max_plaques",
                f"{c.max_plaques} plaques of at most {c.plaque_diameter_mm[1]} mm reach about {reachable:.0f} "
                f"Agatston, below category {CATEGORY_LABELS[k]}'s target {lo:g}",
            )
