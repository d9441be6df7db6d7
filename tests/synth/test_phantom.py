"""The synthetic phantom: realistic HU, exact calcium labels, burden coverage, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from coronary_calcium.errors import InputError
from coronary_calcium.labels import AORTIC, CORONARY_LABELS, LABEL_NAMES, VALVE
from coronary_calcium.scoring.agatston import score_scan
from coronary_calcium.synth.config import CATEGORY_LABELS, SynthConfig
from coronary_calcium.synth.phantom import (
    BLOOD,
    CANCELLOUS_BONE,
    CORONARY_WALL,
    CORTICAL_BONE,
    EPICARDIAL_FAT,
    LUNG,
    MUSCLE,
    MYOCARDIUM,
    SUBCUTANEOUS_FAT,
    TISSUE_HU_RANGES,
    TISSUE_NAMES,
    generate_patient,
)

SMALL = SynthConfig(matrix=256, n_slices=(24, 24))
S2D = np.zeros((3, 3, 3), dtype=bool)
S2D[1] = True


@pytest.fixture(scope="module")
def small_patients():
    """The first 20 patients of the default burden distribution on a 256 x 256 x 24 grid."""
    return [generate_patient(SMALL, i) for i in range(20)]


@pytest.fixture(scope="module")
def full_patient():
    """One patient at the default acquisition (512 x 512, 40-64 slices), with coronary and non-coronary calcium."""
    return generate_patient(SynthConfig(), 0)


def _weight(peak: float) -> int:
    return 0 if peak < 130 else 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4


def _rescore(hu: np.ndarray, labels: np.ndarray, spacing) -> tuple[dict[str, float], list[int]]:
    """Independent Agatston per artery: 2D 8-connected components of coronary labels, >= 1 mm^2, slice peaks."""
    coronary = np.isin(labels, CORONARY_LABELS)
    lab, n = ndi.label(coronary, structure=S2D)
    per_artery = {LABEL_NAMES[v]: 0.0 for v in CORONARY_LABELS}
    positive = set()
    pixel_area = spacing[1] * spacing[2]
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        comp = lab[sl] == i
        area = comp.sum() * pixel_area
        if area < 1.0 - 1e-9:
            continue
        k = sl[0].start
        positive.add(k)
        artery = np.bincount(labels[sl][comp], minlength=5)[1:5].argmax() + 1
        per_artery[LABEL_NAMES[int(artery)]] += area * _weight(float(hu[sl][comp].max())) * spacing[0] / 3.0
    return per_artery, sorted(positive)


def _check_invariants(p) -> None:
    hu, labels, region = p.volume.hu, p.labels, p.heart_region
    assert hu.dtype == np.float32 and labels.dtype == np.uint8 and region.dtype == bool
    assert hu.shape == labels.shape == region.shape == p.tissue.shape
    assert np.array_equal(hu, np.rint(hu)) and hu.min() >= -1024 and hu.max() <= 3071
    assert set(np.unique(labels).tolist()) <= set(range(7))
    # Every labelled calcium voxel is >= 130 HU.
    assert (hu[labels > 0] >= 130).all()
    # Every >= 130 HU component of >= 1 mm^2 touching the heart region is labelled calcium or bone.
    bone = np.isin(p.tissue, (CORTICAL_BONE, CANCELLOUS_BONE))
    lab, n = ndi.label(hu >= 130, structure=S2D)
    area = np.bincount(lab.ravel(), minlength=n + 1) * p.volume.pixel_area_mm2
    big = area >= 1.0 - 1e-9
    big[0] = False
    touches = np.zeros(n + 1, dtype=bool)
    touches[lab[region]] = True
    explained = np.zeros(n + 1, dtype=bool)
    explained[lab[(labels > 0) | bone]] = True
    offending = np.flatnonzero(big & touches & ~explained)
    assert offending.size == 0, f"{p.patient_id}: unexplained >= 1 mm^2 components in the heart region"


def test_invariants_small(small_patients):
    for p in small_patients:
        _check_invariants(p)


def test_invariants_full_size(full_patient):
    p = full_patient
    _check_invariants(p)
    nz, ny, nx = p.volume.shape
    assert (ny, nx) == (512, 512) and 40 <= nz <= 64
    dz, dy, dx = p.volume.spacing
    gated = p.truth["generation"]["gated"]
    assert dz in ((2.5, 3.0) if gated else (5.0,)) and dy == dx and 0.39 <= dx <= 0.81
    assert p.volume.slice_thickness == dz
    assert np.allclose(p.volume.direction, np.eye(3))
    g = p.truth["generation"]
    assert g["kvp"] == 120.0 and 10 <= g["noise_sd_hu"] <= 30
    assert (p.labels > 0).any() and p.truth["agatston"] > 0


def test_tissue_hu_within_ranges(full_patient):
    p = full_patient
    drawn = p.truth["generation"]["tissue_hu"]
    for t, (lo, hi) in TISSUE_HU_RANGES.items():
        assert lo <= drawn[TISSUE_NAMES[t]] <= hi, TISSUE_NAMES[t]
    # Non-contrast: blood is only a few HU above myocardium.
    assert 0 < drawn["blood"] - drawn["myocardium"] <= 5.0 + 1e-6
    # Means of the final image inside eroded tissue masks stay in their ranges (noise averages out).
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndi.generate_binary_structure(2, 1)
    for t, tol in ((SUBCUTANEOUS_FAT, 4), (EPICARDIAL_FAT, 6), (MUSCLE, 4), (LUNG, 6), (BLOOD, 4), (MYOCARDIUM, 4)):
        inner = ndi.binary_erosion(p.tissue == t, structure=structure, iterations=3)
        assert inner.sum() > 500, TISSUE_NAMES[t]
        lo, hi = TISSUE_HU_RANGES[t]
        mean = float(p.volume.hu[inner].mean())
        assert lo - tol <= mean <= hi + tol, (TISSUE_NAMES[t], mean)
    # Cortical bone is bright: its drawn HU is 700-1500 and the image reaches it inside the spine.
    cortex = p.tissue == CORTICAL_BONE
    assert cortex.sum() > 1000
    assert p.volume.hu[cortex].max() >= 700
    # The noise SD matches the drawn one (muscle is uniform).
    inner = ndi.binary_erosion(p.tissue == MUSCLE, structure=structure, iterations=3)
    sd = float(p.volume.hu[inner].std())
    assert 0.8 <= sd / p.truth["generation"]["noise_sd_hu"] <= 1.2


def test_truth_agrees_with_labels(small_patients, full_patient):
    for p in small_patients + [full_patient]:
        per_artery, positive = _rescore(p.volume.hu, p.labels, p.volume.spacing)
        truth = p.truth
        for artery, score in per_artery.items():
            assert truth["per_artery"][artery]["agatston"] == pytest.approx(score, abs=1e-6)
        assert truth["agatston"] == pytest.approx(sum(per_artery.values()), abs=1e-6)
        assert truth["positive_slices"] == positive and truth["n_positive_slices"] == len(positive)
        rescored = score_scan(p.volume.hu, p.volume.spacing, labels=p.labels).to_dict()
        assert rescored["lesions"] == truth["lesions"]
        assert truth["risk_category"] == rescored["categories"]["5-class"]
        for lesion in truth["lesions"]:
            assert lesion["artery"] in ("LM", "LAD", "LCX", "RCA") and lesion["peak_hu"] >= 130


def test_categories_cover_every_risk_class(small_patients):
    measured = [p.truth["risk_category"] for p in small_patients]
    assert set(measured) == set(CATEGORY_LABELS)
    targets = [p.truth["generation"]["target_category"] for p in small_patients]
    assert sum(m == t for m, t in zip(measured, targets)) >= 18


def test_distractors_present(small_patients):
    """Aortic and valve calcification occur, also on slices without coronary calcium (hard negatives)."""
    kinds, hard_negative = set(), 0
    for p in small_patients:
        for lab in (AORTIC, VALVE):
            slices = p.truth["non_coronary"][LABEL_NAMES[lab]]["slices_1mm2"]
            if slices:
                kinds.add(lab)
            hard_negative += len(set(slices) - set(p.truth["positive_slices"]))
    assert kinds == {AORTIC, VALVE} and hard_negative > 0
    # Valve calcification is large and bright.
    peaks = [p.volume.hu[p.labels == VALVE].max() for p in small_patients if (p.labels == VALVE).any()]
    assert max(peaks) > 600


def test_calcium_is_small_and_partial_volume(full_patient):
    p = full_patient
    coronary = [les for les in p.truth["lesions"]]
    assert coronary
    # Lesions are a handful of voxels per slice (up to ~100 mm^2 in a heavy burden's large plaque), with smooth edges
    # (values between 130 and the peak).
    for les in coronary:
        assert min(les["area_mm2"]) >= 1.0 - 1e-9 and max(les["area_mm2"]) < 120
    vals = p.volume.hu[np.isin(p.labels, CORONARY_LABELS)]
    assert vals.min() < 200 and vals.max() > vals.min() + 50


def test_anatomy_moves_between_slices(full_patient):
    """The tilted heart and the 3D artery curves change from slice to slice."""
    p = full_patient
    areas = p.heart_region.sum(axis=(1, 2))
    assert areas.max() > 3 * max(areas[areas > 0].min(), 1)
    ks = [k for k in range(p.volume.shape[0]) if (p.tissue[k] == CORONARY_WALL).any()]
    assert len(ks) > 10
    cents = np.array([np.argwhere(p.tissue[k] == CORONARY_WALL).mean(axis=0) for k in ks])
    assert np.ptp(cents[:, 0]) > 20 and np.ptp(cents[:, 1]) > 20


def test_deterministic_and_independent_of_count():
    a = generate_patient(SMALL, 3)
    b = generate_patient(SMALL.replace(n_patients=7), 3)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.heart_region, b.heart_region)
    assert a.truth == b.truth and a.volume.origin == b.volume.origin
    c = generate_patient(SMALL.replace(seed=1), 3)
    assert not np.array_equal(a.volume.hu, c.volume.hu)
    d = generate_patient(SMALL, 4)
    assert a.volume.shape != d.volume.shape or not np.array_equal(a.volume.hu, d.volume.hu)


def test_bad_index():
    with pytest.raises(InputError):
        generate_patient(SMALL, -1)


def test_heavy_burdens_hold_large_multi_slice_plaques():
    """With large_plaque_prob 1, >400 patients hold a large plaque where it fits in the scanned range (most do):
    a coronary 3D component of >= 100 mm^3 over >= 3 slices (>= 2 at 5 mm) peaking above 1000 HU."""
    config = SMALL.replace(large_plaque_prob=1.0, category_weights=(0.0, 0.0, 0.0, 0.0, 1.0))
    with_large = 0
    for i in range(4):
        p = generate_patient(config, i)
        if not any(pl["fwhm_mm"][0] >= 15.0 and pl["density_hu"] >= 1000.0 for pl in p.truth["plaques"]):
            continue
        with_large += 1
        lab, _ = ndi.label(np.isin(p.labels, CORONARY_LABELS), structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(lab.ravel())[1:] * float(np.prod(p.volume.spacing))
        big = int(np.argmax(sizes)) + 1
        zs = np.unique(np.nonzero(lab == big)[0])
        min_slices = 2 if p.volume.spacing[0] >= 5.0 else 3
        assert sizes.max() >= 100.0 and zs.size >= min_slices, (p.patient_id, sizes.max(), zs.size)
        assert p.volume.hu[lab == big].max() > 1000.0
    assert with_large >= 2


def test_ostial_left_main_calcium_touches_aortic_root_calcium():
    """With ostial_lm_prob 1, some patients have a 2D component holding both left-main and aortic calcium; the
    truth counts only its left-main voxels."""
    config = SMALL.replace(ostial_lm_prob=1.0, category_weights=(0.0, 0.0, 0.0, 0.5, 0.5))
    touching = 0
    for i in range(6):
        p = generate_patient(config, i)
        lab, _ = ndi.label(p.volume.hu >= 130.0, structure=S2D)
        both = set(np.unique(lab[p.labels == 1])) & set(np.unique(lab[p.labels == AORTIC])) - {0}
        touching += len(both)
        lm = score_scan(p.volume.hu, p.volume.spacing, labels=p.labels).per_artery["LM"]["agatston"]
        assert p.truth["per_artery"]["LM"]["agatston"] == pytest.approx(lm)
    assert touching >= 1


def test_full_chest_scans_use_their_own_slice_increments():
    config = SMALL.replace(gated_fraction=0.0, full_slice_increments_mm=(5.0,))
    assert {generate_patient(config, i).volume.spacing[0] for i in range(3)} == {5.0}
    with pytest.raises(InputError, match="full_slice_increments_mm"):
        SMALL.replace(full_slice_increments_mm=())
    with pytest.raises(InputError, match="large_plaque_prob"):
        SMALL.replace(large_plaque_prob=1.5)


def test_lean_hearts_put_coronary_arteries_on_the_myocardium(small_patients):
    """Epicardial fat around the arteries varies: in lean patients the vessel wall touches the myocardium, in others
    a fat halo separates them."""
    fat = np.array([p.truth["generation"]["coronary_fat_mm"] for p in small_patients])
    assert fat.min() >= 0.5 and fat.max() <= 2.5 and fat.min() < 1.0 < fat.max() - 1.0

    def wall_on_myocardium(p) -> int:
        wall = p.tissue == CORONARY_WALL
        return int((ndi.binary_dilation(wall, structure=S2D) & (p.tissue == MYOCARDIUM)).sum())

    lean, thick = small_patients[int(fat.argmin())], small_patients[int(fat.argmax())]
    assert wall_on_myocardium(lean) > 5 * max(wall_on_myocardium(thick), 1)
    with pytest.raises(InputError, match="epicardial_fat_mm"):  # thinner than an artery's wall and lumen
        SMALL.replace(epicardial_fat_mm=(1.0, 9.0))
