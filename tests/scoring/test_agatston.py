"""Agatston / volume / mass scoring against the reference vectors of shared/reference/agatston.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from coronary_calcium.errors import InputError
from coronary_calcium.labels import AORTIC, LAD, LCX, LM, RCA, VALVE
from coronary_calcium.scoring.agatston import (
    RISK_SCHEMES,
    Lesion,
    ScanScore,
    ScoringConfig,
    calibration_factor,
    category_index,
    density_weight,
    find_lesions,
    risk_category,
    score_scan,
)

BG = -50.0


def blank(shape=(1, 8, 8)) -> np.ndarray:
    return np.full(shape, BG)


# --- reference vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity", ["2d-8", "3d-26"])
def test_calciumscoring_jl_agatston_16(connectivity):
    # 2 slices x 8 pixels x 0.25 mm^2, every pixel >= 400 HU, no slice normalisation -> 2 x (2 mm^2 x 4) = 16
    hu = blank((2, 4, 6))
    hu[:, 1:3, 1:5] = 400.0
    cfg = ScoringConfig(normalisation="none", min_area_mm2=0.0, connectivity=connectivity)
    score = score_scan(hu, (1.0, 0.5, 0.5), config=cfg)
    assert score.agatston == pytest.approx(16.0)
    assert len(score.lesions) == (2 if connectivity == "2d-8" else 1)


def test_calciumscoring_jl_mass_0_6():
    # volume 2 mm^3 (8 voxels x 0.25 mm^3), mean 400 HU, c = 0.00075 -> 0.6 mg
    hu = blank((1, 4, 6))
    hu[0, 1:3, 1:5] = [[380.0, 420.0, 400.0, 400.0], [390.0, 410.0, 400.0, 400.0]]
    score = score_scan(hu, (1.0, 0.5, 0.5), config=ScoringConfig(mass_calibration=0.00075))
    (les,) = score.lesions
    assert les.volume_mm3 == pytest.approx(2.0)
    assert les.mean_hu == pytest.approx(400.0)
    assert les.mass_mg == pytest.approx(0.6)
    assert score.mass_mg == pytest.approx(0.6)
    assert any("assumed" in n for n in score.notes)
    phantom = score_scan(hu, (1.0, 0.5, 0.5), config=ScoringConfig(mass_calibration_source="phantom"))
    assert not any("assumed" in n for n in phantom.notes)


def test_coca_roi_5_86():
    # 13 px x 0.2253 mm^2 = 2.93 mm^2, peak 206 HU (weight 2), 3 mm slices 3 mm apart -> 5.86
    hu = blank((1, 6, 8))
    hu[0, 1, 1:6] = 150.0
    hu[0, 2, 1:6] = 160.0
    hu[0, 3, 2:5] = 170.0
    hu[0, 2, 3] = 206.0
    (les,) = find_lesions(hu, (3.0, 0.2253, 1.0))
    assert les.n_voxels == 13
    assert les.total_area_mm2 == pytest.approx(2.9289)
    assert les.slice_weight == [2]
    assert les.peak_hu == 206.0
    assert round(les.agatston, 2) == 5.86


def test_calibration_factor():
    # 200 mgHA/cm^3 = 0.2 mg/mm^3; an insert 267 HU above water gives about the usual 0.00075
    assert calibration_factor(250.0, -17.0) == pytest.approx(0.2 / 267.0)
    assert calibration_factor(100.0, 0.0, density_mg_cm3=100.0) == pytest.approx(0.001)
    with pytest.raises(InputError):
        calibration_factor(0.0, 10.0)
    with pytest.raises(InputError):
        calibration_factor(200.0, 0.0, density_mg_cm3=-1.0)


# --- threshold, kVp and weights -------------------------------------------------------------------------


def test_threshold_inclusive_exclusive_at_130():
    hu = blank()
    hu[0, 2:4, 2:4] = 130.0  # 4 px x 0.25 mm^2 = 1 mm^2, exactly at threshold
    sp = (3.0, 0.5, 0.5)
    inc = score_scan(hu, sp, config=ScoringConfig(inclusive=True))
    exc = score_scan(hu, sp, config=ScoringConfig(inclusive=False))
    assert inc.agatston == pytest.approx(1.0) and len(inc.lesions) == 1
    assert exc.agatston == 0.0 and exc.lesions == []
    hu[0, 2:4, 2:4] = 130.5
    assert score_scan(hu, sp, config=ScoringConfig(inclusive=False)).agatston == pytest.approx(1.0)


def test_integer_hu_volume():
    hu = blank().astype(np.int16)
    hu[0, 2:4, 2:4] = 130
    assert score_scan(hu, (3.0, 0.5, 0.5)).agatston == pytest.approx(1.0)


@pytest.mark.parametrize("kvp,threshold", [(70, 207.0), (80, 177.0), (100, 145.0), (120, 130.0), (135, 119.0)])
def test_kvp_thresholds(kvp, threshold):
    cfg = ScoringConfig(kvp=kvp)
    assert cfg.threshold == threshold
    assert cfg.weight_cutpoints == pytest.approx(
        (threshold, 200 * threshold / 130, 300 * threshold / 130, 400 * threshold / 130)
    )


def test_kvp_unlisted_needs_explicit_threshold():
    with pytest.raises(InputError, match="kvp"):
        ScoringConfig(kvp=90)
    assert ScoringConfig(kvp=90, threshold_hu=150.0).threshold == 150.0


def test_kvp_threshold_applied_to_scoring():
    hu = blank()
    hu[0, 2:4, 2:4] = 140.0
    sp = (3.0, 0.5, 0.5)
    assert score_scan(hu, sp, config=ScoringConfig(kvp=120)).agatston == pytest.approx(1.0)
    assert score_scan(hu, sp, config=ScoringConfig(kvp=100)).agatston == 0.0  # 145 HU at 100 kV


@pytest.mark.parametrize(
    "peak,weight",
    [(129.99, 0), (130.0, 1), (199.9, 1), (200.0, 2), (299.9, 2), (300.0, 3), (399.9, 3), (400.0, 4), (2000, 4)],
)
def test_density_weight_120kv(peak, weight):
    assert density_weight(peak) == weight


def test_density_weight_scaled_and_exclusive():
    kv80 = ScoringConfig(kvp=80)  # cut-points 177, 272.3, 408.5, 544.6
    assert density_weight(272.0, kv80) == 1
    assert density_weight(272.0) == 2
    assert density_weight(545.0, kv80) == 4
    assert density_weight(176.9, kv80) == 0
    unscaled = ScoringConfig(kvp=80, scale_weights=False)
    assert unscaled.weight_cutpoints == (177.0, 200.0, 300.0, 400.0)
    assert density_weight(272.0, unscaled) == 2
    assert density_weight(130.0, ScoringConfig(inclusive=False)) == 0


# --- minimum size and connectivity ----------------------------------------------------------------------


def test_min_area_boundary():
    sp = (3.0, 0.5, 0.5)
    hu = blank()
    hu[0, 1, 1:5] = 450.0  # 4 px = exactly 1.0 mm^2: kept
    hu[0, 5, 1:4] = 450.0  # 3 px = 0.75 mm^2: dropped
    lesions = find_lesions(hu, sp)
    assert [les.total_area_mm2 for les in lesions] == [pytest.approx(1.0)]
    # the same 4 px just below 1 mm^2 are dropped
    assert find_lesions(hu, (3.0, 0.5, 0.4999)) == []
    # min area 0 keeps both
    assert len(find_lesions(hu, sp, config=ScoringConfig(min_area_mm2=0.0))) == 2


def test_min_area_float_roundoff_kept():
    hu = blank((1, 12, 12))
    hu[0, 1:11, 1:11] = 450.0  # 100 px x 0.1 mm x 0.1 mm: 1 mm^2 up to float round-off
    assert len(find_lesions(hu, (3.0, 0.1, 0.1))) == 1
    hu[0, 10, 10] = BG  # 99 px
    assert find_lesions(hu, (3.0, 0.1, 0.1)) == []


def test_8_vs_4_connectivity_diagonal():
    hu = blank()
    hu[0, 0:2, 0:2] = 300.0
    hu[0, 2:4, 2:4] = 300.0  # touches the first block only at a corner
    sp = (3.0, 0.5, 0.5)
    eight = find_lesions(hu, sp, config=ScoringConfig(connectivity="2d-8"))
    four = find_lesions(hu, sp, config=ScoringConfig(connectivity="2d-4"))
    assert len(eight) == 1 and eight[0].total_area_mm2 == pytest.approx(2.0)
    assert len(four) == 2
    assert sum(les.agatston for les in eight) == pytest.approx(sum(les.agatston for les in four)) == pytest.approx(6.0)


def test_3d_26_vs_6_connectivity():
    hu = blank((2, 8, 8))
    hu[0, 0:2, 0:2] = 300.0
    hu[1, 2:4, 2:4] = 300.0  # corner-to-corner across slices
    sp = (3.0, 0.5, 0.5)
    assert len(find_lesions(hu, sp, config=ScoringConfig(connectivity="3d-26"))) == 1
    assert len(find_lesions(hu, sp, config=ScoringConfig(connectivity="3d-6"))) == 2
    assert len(find_lesions(hu, sp, config=ScoringConfig(connectivity="2d-8"))) == 2


def test_2d_vs_3d_lesion_counting_and_weights():
    hu = blank((3, 8, 8))
    for z, v in enumerate((150.0, 250.0, 450.0)):
        hu[z, 2:4, 2:4] = v  # 1 mm^2 per slice, weights 1, 2, 4
    sp = (3.0, 0.5, 0.5)
    two_d = score_scan(hu, sp)
    three_d = score_scan(hu, sp, config=ScoringConfig(connectivity="3d-26"))
    assert len(two_d.lesions) == 3 and len(three_d.lesions) == 1
    assert two_d.agatston == pytest.approx(7.0) and three_d.agatston == pytest.approx(7.0)
    (les,) = three_d.lesions
    assert les.slices == [0, 1, 2]
    assert les.slice_weight == [1, 2, 4]
    assert les.slice_agatston == pytest.approx([1.0, 2.0, 4.0])
    assert les.peak_hu == 450.0 and les.n_voxels == 12 and les.volume_mm3 == pytest.approx(9.0)
    assert les.centroid_zyx == pytest.approx((1.0, 2.5, 2.5))
    # the known deviation: one weight from the 3D lesion's peak
    dev = score_scan(hu, sp, config=ScoringConfig(connectivity="3d-26", weight_from="lesion_peak"))
    assert dev.agatston == pytest.approx(12.0)
    assert any("peak" in n for n in dev.notes)
    # in 2D the lesion peak is the slice peak
    assert score_scan(hu, sp, config=ScoringConfig(weight_from="lesion_peak")).agatston == pytest.approx(7.0)


def test_3d_min_area_per_slice_part_and_min_volume():
    hu = blank((3, 8, 8))
    hu[0, 2:4, 2:4] = 450.0
    hu[1, 2:4, 2:4] = 450.0
    hu[2, 2, 2] = 450.0  # a 0.25 mm^2 tail on the last slice
    sp = (3.0, 0.5, 0.5)
    (les,) = find_lesions(hu, sp, config=ScoringConfig(connectivity="3d-26"))
    assert les.slices == [0, 1] and les.n_voxels == 8 and les.agatston == pytest.approx(8.0)
    (les,) = find_lesions(hu, sp, config=ScoringConfig(connectivity="3d-26", min_area_mm2=0.0))
    assert les.slices == [0, 1, 2] and les.n_voxels == 9 and les.agatston == pytest.approx(9.0)
    # 3D size rule instead of the area rule: 9 voxels x 0.75 mm^3 = 6.75 mm^3
    cfg = ScoringConfig(connectivity="3d-26", min_area_mm2=0.0, min_volume_mm3=6.75)
    assert len(find_lesions(hu, sp, config=cfg)) == 1
    cfg = ScoringConfig(connectivity="3d-26", min_area_mm2=0.0, min_volume_mm3=7.0)
    assert find_lesions(hu, sp, config=cfg) == []


# --- slice normalisation ---------------------------------------------------------------------------------


def test_increment_vs_thickness_normalisation_overlapping_slices():
    hu = blank()
    hu[0, 2:4, 2:4] = 450.0  # 1 mm^2, weight 4
    sp = (1.5, 0.5, 0.5)  # 3 mm slices reconstructed every 1.5 mm
    assert score_scan(hu, sp, slice_thickness=3.0).agatston == pytest.approx(2.0)
    thick = score_scan(hu, sp, slice_thickness=3.0, config=ScoringConfig(normalisation="thickness"))
    assert thick.agatston == pytest.approx(4.0)
    assert any("thickness" in n for n in thick.notes)
    assert score_scan(hu, sp, config=ScoringConfig(normalisation="none")).agatston == pytest.approx(4.0)
    with pytest.raises(InputError, match="slice_thickness"):
        score_scan(hu, sp, config=ScoringConfig(normalisation="thickness"))


# --- labels, mask and per-artery totals ---------------------------------------------------------------


def test_non_coronary_labels_never_count():
    hu = blank((1, 16, 16))
    labels = np.zeros(hu.shape, np.uint8)
    blocks = {AORTIC: (0, 0), VALVE: (0, 8), 0: (8, 0), LAD: (8, 8)}
    for lab, (y, x) in blocks.items():
        hu[0, y + 1 : y + 5, x + 1 : x + 5] = 500.0
        labels[0, y + 1 : y + 5, x + 1 : x + 5] = lab
    sp = (3.0, 0.5, 0.5)
    score = score_scan(hu, sp, labels=labels)
    assert [les.artery for les in score.lesions] == ["LAD"]
    assert score.agatston == pytest.approx(4.0 * 4)
    assert set(score.per_artery) == {"LM", "LAD", "LCX", "RCA"}
    # without labels everything counts, as "unknown"
    unlabelled = score_scan(hu, sp)
    assert len(unlabelled.lesions) == 4 and unlabelled.agatston == pytest.approx(64.0)
    assert unlabelled.per_artery["unknown"]["n_lesions"] == 4
    assert {les.label for les in unlabelled.lesions} == {0}


def test_partly_aortic_component_counts_only_coronary_voxels():
    hu = blank()
    hu[0, 2:4, 1:7] = 450.0
    labels = np.zeros(hu.shape, np.int32)
    labels[0, 2:4, 1:3] = AORTIC
    labels[0, 2:4, 3:7] = RCA
    (les,) = find_lesions(hu, (3.0, 0.5, 0.5), labels=labels)
    assert les.n_voxels == 8 and les.artery == "RCA" and les.label == RCA


def test_majority_label_and_per_artery_sum():
    hu = blank((2, 16, 16))
    labels = np.zeros(hu.shape, np.int16)
    hu[0, 1:4, 1:4] = 250.0
    labels[0, 1:4, 1:4] = LM
    labels[0, 1, 1:3] = LAD  # 2 of 9 voxels LAD: the lesion is LM
    hu[0, 8:12, 8:12] = 350.0
    labels[0, 8:12, 8:12] = LCX
    hu[1, 1:5, 10:12] = 500.0
    labels[1, 1:5, 10:12] = RCA
    hu[1, 10:12, 1:3] = 180.0
    labels[1, 10:12, 1:3] = LAD  # 1 mm^2 exactly
    score = score_scan(hu, (3.0, 0.5, 0.5), labels=labels)
    assert sorted(les.artery for les in score.lesions) == ["LAD", "LCX", "LM", "RCA"]
    lm = next(les for les in score.lesions if les.artery == "LM")
    assert lm.agatston == pytest.approx(9 * 0.25 * 2)
    for key in ("agatston", "volume_mm3", "mass_mg"):
        assert sum(d[key] for d in score.per_artery.values()) == pytest.approx(getattr(score, key))
    assert sum(d["n_lesions"] for d in score.per_artery.values()) == len(score.lesions)
    assert score.per_artery["LCX"]["agatston"] == pytest.approx(4.0 * 3)
    assert score.per_artery["RCA"]["agatston"] == pytest.approx(2.0 * 4)
    assert score.per_artery["LAD"]["agatston"] == pytest.approx(1.0)


def test_mask_restricts_candidates():
    hu = blank()
    hu[0, 1:3, 1:3] = 450.0
    hu[0, 5:7, 5:7] = 450.0
    mask = np.zeros(hu.shape, bool)
    mask[0, :4, :4] = True
    (les,) = find_lesions(hu, (3.0, 0.5, 0.5), mask=mask)
    assert les.centroid_zyx == pytest.approx((0.0, 1.5, 1.5))


def test_no_calcium():
    score = score_scan(blank(), (3.0, 0.5, 0.5))
    assert score.agatston == 0.0 and score.lesions == [] and score.mass_mg == 0.0
    assert score.categories == {"5-class": "0", "4-class": "0", "clinical": "0"}


# --- independent brute-force reference ----------------------------------------------------------------


def _naive_total(hu, sp, cfg: ScoringConfig) -> tuple[float, float, int]:
    """Slow, loop-based Agatston / volume / lesion count straight from the written rules."""
    cand = hu >= cfg.threshold
    px = sp[1] * sp[2]
    total = volume = 0.0
    count = 0
    if cfg.connectivity.startswith("2d"):
        st = ndimage.generate_binary_structure(2, 2 if cfg.connectivity == "2d-8" else 1)
        for z in range(hu.shape[0]):
            lab, n = ndimage.label(cand[z], structure=st)
            for i in range(1, n + 1):
                sel = lab == i
                area = sel.sum() * px
                if area < cfg.min_area_mm2 - 1e-9:
                    continue
                total += area * density_weight(hu[z][sel].max(), cfg) * sp[0] / 3
                volume += sel.sum() * px * sp[0]
                count += 1
    else:
        st = ndimage.generate_binary_structure(3, 3 if cfg.connectivity == "3d-26" else 1)
        lab, n = ndimage.label(cand, structure=st)
        for i in range(1, n + 1):
            parts = []
            for z in range(hu.shape[0]):
                sel = lab[z] == i
                if sel.sum() and sel.sum() * px >= cfg.min_area_mm2 - 1e-9:
                    parts.append((sel.sum() * px, hu[z][sel].max()))
            if not parts:
                continue
            peak3d = max(p for _, p in parts)
            for area, peak in parts:
                w = density_weight(peak if cfg.weight_from == "slice_peak" else peak3d, cfg)
                total += area * w * sp[0] / 3
                volume += area * sp[0]
            count += 1
    return total, volume, count


@pytest.mark.parametrize(
    "cfg",
    [
        ScoringConfig(),
        ScoringConfig(connectivity="2d-4", min_area_mm2=0.5),
        ScoringConfig(connectivity="3d-26"),
        ScoringConfig(connectivity="3d-6", weight_from="lesion_peak", kvp=100),
    ],
    ids=["2d-8", "2d-4", "3d-26", "3d-6-lesion-peak"],
)
def test_matches_brute_force(cfg):
    rng = np.random.default_rng(7)
    hu = rng.normal(0.0, 90.0, (6, 40, 40))
    hu = ndimage.uniform_filter(hu, size=(1, 2, 2)) * 1.8
    sp = (2.5, 0.6, 0.7)
    expected = _naive_total(hu, sp, cfg)
    lesions = find_lesions(hu, sp, config=cfg)
    assert expected[2] > 10  # the random volume holds a fair number of lesions
    assert len(lesions) == expected[2]
    assert sum(les.agatston for les in lesions) == pytest.approx(expected[0])
    assert sum(les.volume_mm3 for les in lesions) == pytest.approx(expected[1])
    # voxel sets are disjoint and add up
    allvox = np.concatenate([les.voxels for les in lesions])
    assert allvox.size == np.unique(allvox).size == sum(les.n_voxels for les in lesions)
    assert np.all(hu.ravel()[allvox] >= cfg.threshold)


# --- output -------------------------------------------------------------------------------------------


def test_to_dict_json_ready():
    hu = blank((2, 8, 8))
    hu[:, 2:5, 2:5] = 333.0
    labels = np.full(hu.shape, LAD)
    score = score_scan(hu, (3.0, 0.5, 0.5), labels=labels)
    assert isinstance(score, ScanScore) and isinstance(score.lesions[0], Lesion)
    d = json.loads(json.dumps(score.to_dict()))
    assert d["agatston"] == pytest.approx(2 * 9 * 0.25 * 3)
    assert d["categories"] == {"5-class": "11-100", "4-class": "1-100", "clinical": "1-99"}
    assert "voxels" not in d["lesions"][0]
    assert d["config"]["threshold_hu_used"] == 130.0
    assert d["lesions"][0]["artery"] == "LAD" and d["per_artery"]["LAD"]["n_lesions"] == 2


# --- risk categories ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme,score,label",
    [
        ("5-class", 0, "0"),
        ("5-class", 0.01, "1-10"),
        ("5-class", 1, "1-10"),
        ("5-class", 10, "1-10"),
        ("5-class", 10.4, "11-100"),
        ("5-class", 11, "11-100"),
        ("5-class", 100, "11-100"),
        ("5-class", 100.5, "101-400"),
        ("5-class", 400, "101-400"),
        ("5-class", 400.01, ">400"),
        ("4-class", 0, "0"),
        ("4-class", 0.3, "1-100"),
        ("4-class", 100, "1-100"),
        ("4-class", 100.5, "101-400"),
        ("4-class", 400, "101-400"),
        ("4-class", 401, ">400"),
        ("clinical", 0, "0"),
        ("clinical", 0.3, "1-99"),
        ("clinical", 99, "1-99"),
        ("clinical", 99.9, "1-99"),
        ("clinical", 100, "100-399"),
        ("clinical", 399.9, "100-399"),
        ("clinical", 400, ">=400"),
        ("clinical", 5000, ">=400"),
    ],
)
def test_risk_category_boundaries(scheme, score, label):
    assert risk_category(score, scheme) == label
    assert category_index(score, scheme) == [c[0] for c in RISK_SCHEMES[scheme]].index(label)


def test_risk_category_default_and_errors():
    assert risk_category(50) == "11-100"
    with pytest.raises(InputError):
        risk_category(-1)
    with pytest.raises(InputError):
        risk_category(float("nan"))
    with pytest.raises(InputError):
        risk_category(5, "7-class")


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connectivity": "3d-18"},
        {"min_area_mm2": -1},
        {"min_volume_mm3": float("nan")},
        {"normalisation": "slice"},
        {"weight_from": "mean"},
        {"mass_calibration": 0},
        {"mass_calibration_source": "guess"},
        {"inclusive": "yes"},
        {"threshold_hu": -5},
        {"kvp": -120},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(InputError):
        ScoringConfig(**kwargs)


def test_input_validation():
    hu = blank()
    with pytest.raises(InputError, match="hu"):
        find_lesions(hu[0], (3.0, 0.5, 0.5))
    with pytest.raises(InputError, match="spacing"):
        find_lesions(hu, (3.0, 0.5))
    with pytest.raises(InputError, match="spacing"):
        find_lesions(hu, (0.0, 0.5, 0.5))
    with pytest.raises(InputError, match="mask"):
        find_lesions(hu, (3.0, 0.5, 0.5), mask=np.ones((1, 4, 4), bool))
    with pytest.raises(InputError, match="labels"):
        find_lesions(hu, (3.0, 0.5, 0.5), labels=np.full(hu.shape, 1.5))
    with pytest.raises(InputError, match="slice_thickness"):
        find_lesions(hu, (3.0, 0.5, 0.5), slice_thickness=-3.0)
    hu[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="infinite"):
        find_lesions(hu, (3.0, 0.5, 0.5))
    hu[0, 0, 0] = np.nan  # NaN never passes the threshold
    assert find_lesions(hu, (3.0, 0.5, 0.5)) == []


# --- full size ---------------------------------------------------------------------------------------


def test_full_size_scan_with_many_lesions():
    """A 512 x 512 x 48 scan with 40 labelled 5 x 5 x 3 deposits: each is found once, per-label totals add up.
    (Its speed is measured by benchmarks/inference_speed.py, not asserted here: timings in tests fail on a busy
    machine.)"""
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 20.0, (48, 512, 512)).astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    for _ in range(40):
        z, y, x = rng.integers(2, 45), rng.integers(10, 500), rng.integers(10, 500)
        hu[z - 1 : z + 2, y - 2 : y + 3, x - 2 : x + 3] = rng.uniform(150, 600)
        labels[z - 1 : z + 2, y - 2 : y + 3, x - 2 : x + 3] = rng.integers(1, 7)
    score = score_scan(hu, (3.0, 0.7, 0.7), labels=labels)
    assert len(score.lesions) > 24
    assert score.agatston == pytest.approx(sum(les.agatston for les in score.lesions))
