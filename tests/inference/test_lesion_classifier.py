"""Lesion features on hand-made volumes, and the exported boosted trees against scikit-learn's own predictions."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.inference.calibration import CLASSIFIER_FEATURES, cross_fit_lesion_classifier
from coronary_calcium.inference.lesion_classifier import (
    DEFAULT_SEEDS,
    DEFAULT_TREE_PARAMS,
    LesionClassifier,
    fit_lesion_classifier,
    pool_probabilities,
)
from coronary_calcium.inference.lesion_features import (
    FAT_CAP_MM,
    LESION_FEATURES,
    dense_components,
    lesion_features,
    pixel_noise_hu,
)
from coronary_calcium.inference.thresholds import Thresholds, file_sha256, load_thresholds, save_thresholds
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions


def _toy(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + 0.3 * rng.normal(size=n)) > 0.8
    return x, y


def test_exported_trees_give_scikit_learns_probabilities():
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = _toy()
    clf = fit_lesion_classifier(x, y, ["a", "b", "c", "d"])
    references = [HistGradientBoostingClassifier(**DEFAULT_TREE_PARAMS, random_state=seed).fit(x, y)
                  for seed in DEFAULT_SEEDS]
    x_new, _ = _toy(300, seed=1)
    expected = np.mean([r.predict_proba(x_new)[:, 1] for r in references], axis=0)
    np.testing.assert_allclose(clf.predict_proba(x_new), expected, rtol=1e-10, atol=1e-12)
    assert clf.fitted_on["n_trees"] == [r.n_iter_ for r in references]
    assert clf.fitted_on["n_coronary"] == int(y.sum())
    assert len(set(clf.fitted_on["n_trees"])) > 1  # the seeds' held-out tenths differ
    back = LesionClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    np.testing.assert_array_equal(back.predict_proba(x_new), clf.predict_proba(x_new))


def _collected(n_scans: int, per_scan: int, seed: int, patients: list[str] | None = None) -> dict:
    """Candidates as calibration collects them: every lesion feature, coronary / aortic-or-valve flags, patient ids."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_scans * per_scan, len(LESION_FEATURES)))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + 0.3 * rng.normal(size=len(x))) > 0.8
    patients = patients or [f"P{i}" for i in range(n_scans)]
    return {"features": x, "coronary": y, "non_coronary": ~y & (x[:, 3] > 1.5), "n_scans": n_scans,
            "n_ref": int(y.sum()), "patient": np.repeat(np.asarray(patients), per_scan)}


def test_cross_fitting_scores_each_validation_patient_with_trees_that_never_saw_it():
    # 5 validation scans of 4 patients, the first patient's two scans first: folds (in order) A, B, C, then D
    fit, val = _collected(4, 150, seed=0), _collected(5, 60, seed=1, patients=["A", "A", "B", "C", "D"])
    small = {**DEFAULT_TREE_PARAMS, "max_iter": 20}  # few trees: fast; the folds are what is tested
    every = LESION_FEATURES
    classifier, p, folds = cross_fit_lesion_classifier(fit, val, folds=3, tree_params=small, data=("tr", "va"),
                                                       features=every)
    assert folds == 3 and classifier.fitted_on["n_candidates"] == 600 + 300
    assert classifier.fitted_on["data"] == ["tr", "va"] and classifier.fitted_on["n_scans"] == 4 + 5
    held = np.isin(val["patient"], ["A", "D"])  # fold 0: both scans of A, and D
    x = np.concatenate([fit["features"], val["features"][~held]])
    y = np.concatenate([fit["coronary"], val["coronary"][~held]])
    alone = fit_lesion_classifier(x, y, LESION_FEATURES, small)  # aortic / valve candidates weigh 1 by default
    np.testing.assert_allclose(p[held], alone.predict_proba(val["features"][held]), rtol=1e-12)
    # the final classifier was fitted on the validation candidates too: on them it differs from the out-of-fold one
    assert np.abs(classifier.predict_proba(val["features"]) - p).max() > 0.01
    only_fit, p0, folds0 = cross_fit_lesion_classifier(fit, val, folds=0, tree_params=small, data=("tr", "va"),
                                                       features=every)
    assert folds0 == 0 and only_fit.fitted_on["n_candidates"] == 600 and only_fit.fitted_on["data"] == "tr"
    np.testing.assert_array_equal(p0, only_fit.predict_proba(val["features"]))
    two_patients = _collected(3, 60, seed=2, patients=["A", "B", "B"])
    assert cross_fit_lesion_classifier(fit, two_patients, folds=3, tree_params=small)[2] == 2  # one per patient
    with pytest.raises(InputError, match="needs at least 2 validation patients, got 1"):
        cross_fit_lesion_classifier(fit, _collected(2, 60, seed=3, patients=["A", "A"]), folds=3)
    for bad in (1, 2.5, True, -1):
        with pytest.raises(InputError, match="validation_folds: must be 0"):
            cross_fit_lesion_classifier(fit, val, folds=bad)


def test_the_classifier_reads_its_feature_subset_and_refuses_unknown_names():
    fit, val = _collected(4, 150, seed=0), _collected(3, 60, seed=1)
    small = {**DEFAULT_TREE_PARAMS, "max_iter": 20}
    classifier, p, _ = cross_fit_lesion_classifier(fit, val, folds=0, tree_params=small)
    assert classifier.features == CLASSIFIER_FEATURES and "heart_depth_mm" not in classifier.features
    columns = [LESION_FEATURES.index(f) for f in CLASSIFIER_FEATURES]
    alone = fit_lesion_classifier(fit["features"][:, columns], fit["coronary"], CLASSIFIER_FEATURES, small)
    np.testing.assert_array_equal(p, alone.predict_proba(val["features"][:, columns]))
    for bad in (("no_such_feature",), ("log_area_mm2", "log_area_mm2"), ()):
        with pytest.raises(InputError, match="classifier_features: must be distinct names of LESION_FEATURES"):
            cross_fit_lesion_classifier(fit, val, folds=0, tree_params=small, features=bad)
    with pytest.raises(InputError, match=r"unknown \['no_such_feature'\], repeated \['log_area_mm2'\]"):
        cross_fit_lesion_classifier(fit, val, folds=0, features=("no_such_feature", "log_area_mm2", "log_area_mm2"))


def test_bad_classifier_input_is_refused():
    x, y = _toy(100)
    with pytest.raises(InputError, match="needs coronary and other candidates"):
        fit_lesion_classifier(x, np.zeros(100, bool), list("abcd"))
    with pytest.raises(InputError, match="NaN"):
        fit_lesion_classifier(np.where(x > 2, np.nan, x), y, list("abcd"))
    with pytest.raises(InputError, match="100 finite non-negative weights"):
        fit_lesion_classifier(x, y, list("abcd"), sample_weight=-np.ones(100))
    clf = fit_lesion_classifier(x, y, list("abcd"))
    with pytest.raises(InputError, match=r"expected \(n, 4\)"):
        clf.predict_proba(x[:, :3])
    broken = clf.to_dict()
    tree = broken["members"][1]["trees"][0]
    inner = tree["leaf"].index(0)
    tree["left"][inner] = len(tree["left"]) + 5
    with pytest.raises(InputError, match="member 1 tree 0: a node points outside"):
        LesionClassifier.from_dict(broken)
    tree["left"][inner] = 0  # back to the root: a loop
    with pytest.raises(InputError, match="back up the tree"):
        LesionClassifier.from_dict(broken)
    tree["left"][inner] = "a"
    with pytest.raises(InputError, match="must hold numbers"):
        LesionClassifier.from_dict(broken)
    bad_members = {**clf.to_dict(), "members": [{"baseline": "x", "trees": []}]}
    for bad in ([1, 2], {**clf.to_dict(), "features": 3}, bad_members):
        with pytest.raises(InputError, match="lesion_classifier"):
            LesionClassifier.from_dict(bad)
    with pytest.raises(InputError, match="lesion_classifier"):
        Thresholds(network_name="tiny_cnn", checkpoint="m.pt", checkpoint_sha256="", t_slice=0.5, t_cam=0.5,
                   cam_layer="layer2", lesion_classifier="trees", t_lesion=0.5)


def _chest() -> tuple[np.ndarray, tuple[float, float, float]]:
    """(8, 64, 64) at 2.5 x 1 x 1 mm: a body of fat with soft tissue, a 3 x 3 calcium speck in the fat on slice 3 and
    a bone bar through every slice."""
    hu = np.full((8, 64, 64), -1000.0, dtype=np.float32)
    hu[:, 8:56, 8:56] = -100.0  # fat
    hu[:, 30:50, 30:50] = 40.0  # soft tissue
    hu[3, 20:23, 40:43] = 400.0  # calcium in fat, one slice
    hu[:, 48:52, 14:20] = 900.0  # bone through all slices
    return hu, (2.5, 1.0, 1.0)


def test_lesion_features_of_a_calcium_speck_and_a_bone():
    hu, spacing = _chest()
    config = ScoringConfig()
    candidates = find_lesions(hu, spacing, config=config)
    probs = np.linspace(0.0, 0.7, 8)
    slices = sorted({int(c.slices[0]) for c in candidates})
    maps = np.zeros((len(slices), 64, 64), dtype=np.float32)
    maps[slices.index(3), 20:23, 40:43] = np.array([[0.2, 0.4, 0.6]] * 3)  # CAM on the speck only
    f = lesion_features(hu, spacing, candidates, probs, maps, slices, config)
    assert f.shape == (len(candidates), len(LESION_FEATURES)) and np.isfinite(f).all()
    col = {name: i for i, name in enumerate(LESION_FEATURES)}
    speck = next(i for i, c in enumerate(candidates) if c.peak_hu == 400.0)
    bone3 = next(i for i, c in enumerate(candidates) if c.peak_hu == 900.0 and c.slices == [3])
    s, b = f[speck], f[bone3]
    assert s[col["slice_probability"]] == pytest.approx(0.3)
    assert s[col["neighbour_probability"]] == pytest.approx(0.4)
    assert s[col["cam_mean"]] == pytest.approx(0.4, abs=1e-6) and s[col["cam_max"]] == pytest.approx(0.6, abs=1e-6)
    assert b[col["cam_max"]] == 0.0
    assert s[col["log_area_mm2"]] == pytest.approx(np.log(9.0))
    assert s[col["log_peak_hu"]] == pytest.approx(np.log(400.0))
    assert s[col["component_z_mm"]] == pytest.approx(2.5) and b[col["component_z_mm"]] == pytest.approx(20.0)
    assert s[col["log_component_mm3"]] == pytest.approx(np.log(9 * 2.5))
    assert b[col["log_component_mm3"]] == pytest.approx(np.log(8 * 24 * 2.5))
    # no lungs in this toy chest: their feature takes its fallback; the speck lies deeper inside the body than the bone
    assert s[col["lung_distance_mm"]] == b[col["lung_distance_mm"]] == 100.0
    assert s[col["body_depth_mm"]] > b[col["body_depth_mm"]] > 0.0
    # in a 7 x 7 square around each speck pixel: fat but the speck itself; around the bone: bone, fat, air
    assert s[col["fat_3mm"]] > 0.7 and s[col["lung_3mm"]] == 0.0 and s[col["soft_3mm"]] == 0.0
    assert b[col["dense_3mm"]] > s[col["dense_3mm"]]
    assert b[col["lung_8mm"]] > 0.0  # the bone lies near the body's edge
    # the toy chest is noiseless: no pixel noise, so every peak is far above it (capped)
    assert s[col["noise_hu"]] == 0.0 and s[col["peak_over_noise"]] == 50.0


@pytest.mark.parametrize("sd", [8.0, 20.0, 32.0])
def test_pixel_noise_is_the_sd_of_soft_tissue_and_scales_how_far_a_peak_stands_above_the_threshold(sd):
    """White noise of a known SD on soft tissue, fat and air: the estimate comes from the soft tissue alone (within
    7 %), and a speck of 190 HU stands (190 - 130) / SD above it."""
    rng = np.random.default_rng(int(sd))
    hu = np.full((6, 96, 96), -1000.0, np.float32)
    hu[:, 10:86, 10:86] = -90.0  # fat
    hu[:, 30:66, 30:66] = 40.0  # soft tissue
    hu += rng.normal(0.0, sd, size=hu.shape).astype(np.float32)
    hu[2, 40:44, 40:44] = 190.0
    noise = pixel_noise_hu(hu)
    assert noise == pytest.approx(sd, rel=0.07)
    config = ScoringConfig()
    candidates = [c for c in find_lesions(hu, (2.5, 0.5, 0.5), config=config) if c.peak_hu == 190.0]
    f = lesion_features(hu, (2.5, 0.5, 0.5), candidates, np.zeros(6), np.zeros((1, 96, 96), np.float32), [2], config)
    col = {name: i for i, name in enumerate(LESION_FEATURES)}
    assert f[0, col["noise_hu"]] == pytest.approx(noise)
    assert f[0, col["peak_over_noise"]] == pytest.approx(60.0 / noise)
    assert pixel_noise_hu(np.full((2, 8, 8), -1000.0)) == 0.0  # no soft tissue: no estimate


@pytest.mark.parametrize("pixel_mm", [0.5, 0.8])
def test_lumen_features_tell_a_vessel_from_the_aorta(pixel_mm):
    """One slice in fat: a speck on the wall of a 24-pixel-radius disc of blood (aortic wall calcium), a speck beside
    a 4-pixel-radius vessel (coronary calcium), a speck alone in fat, and a speck on the image's edge."""
    hu = np.full((1, 128, 128), -100.0, dtype=np.float32)
    yy, xx = np.mgrid[:128, :128]
    aorta = (yy - 40) ** 2 + (xx - 40) ** 2 <= 24**2
    vessel = (yy - 100) ** 2 + (xx - 100) ** 2 <= 4**2
    hu[0][aorta | vessel] = 40.0
    hu[0, 39:42, 64:67] = 500.0  # just outside the disc's right edge (column 64)
    hu[0, 99:102, 104:107] = 500.0  # just outside the vessel's right edge (column 104)
    hu[0, 100:103, 20:23] = 500.0  # alone in fat
    hu[0, 0:2, 90:93] = 500.0  # on the top edge, in fat
    spacing = (2.5, pixel_mm, pixel_mm)
    config = ScoringConfig()
    candidates = find_lesions(hu, spacing, config=config)
    assert len(candidates) == 4
    args = (hu, spacing, candidates, np.zeros(1), np.zeros((1, 128, 128), np.float32), [0], config)
    f = lesion_features(*args)
    np.testing.assert_array_equal(lesion_features(*args, components=dense_components(hu, config)), f)
    col = {name: i for i, name in enumerate(LESION_FEATURES)}
    by_column = {int(np.mean(np.asarray(c.voxels) % 128)): f[i] for i, c in enumerate(candidates)}
    wall, beside_vessel, alone, edge = by_column[65], by_column[105], by_column[21], by_column[91]
    # taxicab depth of a disc's centre = its radius in pixels, less the one the 3 x 3 mean blurs into fat
    assert wall[col["lumen_mm"]] == pytest.approx(24 * pixel_mm, abs=1.5 * pixel_mm)
    assert beside_vessel[col["lumen_mm"]] == pytest.approx(4 * pixel_mm, abs=1.5 * pixel_mm)
    for speck in (alone, edge):
        assert speck[col["lumen_mm"]] == 0.0 and speck[col["log_lumen_mm2"]] == 0.0
    assert np.expm1(wall[col["log_lumen_mm2"]]) == pytest.approx(np.pi * (24 * pixel_mm) ** 2, rel=0.15)
    assert np.expm1(beside_vessel[col["log_lumen_mm2"]]) == pytest.approx(np.pi * (4 * pixel_mm) ** 2, rel=0.5)
    with pytest.raises(InputError, match="components: shape"):
        lesion_features(*args, components=np.zeros((1, 64, 64), dtype=np.int32))


@pytest.mark.parametrize("pixel_mm", [0.5, 0.8])
def test_fat_distance_tells_calcium_in_fat_from_calcium_in_blood(pixel_mm):
    """A 24-pixel-radius disc of blood in fat, in noise: a speck at its centre (valve calcium) lies 22 pixels from
    fat, one on its rim (wall calcium) and one in fat (coronary) lie next to it; a slice without fat reads the cap."""
    rng = np.random.default_rng(0)
    hu = np.full((2, 128, 128), -100.0, dtype=np.float32)
    yy, xx = np.mgrid[:128, :128]
    hu[0][(yy - 64) ** 2 + (xx - 64) ** 2 <= 24**2] = 40.0
    hu += rng.normal(0.0, 20.0, hu.shape).astype(np.float32)
    hu[1] = 40.0
    for z, y, x in ((0, 63, 63), (0, 63, 87), (0, 20, 20), (1, 63, 63)):
        hu[z, y : y + 3, x : x + 3] = 600.0
    spacing = (2.5, pixel_mm, pixel_mm)
    config = ScoringConfig()
    candidates = find_lesions(hu, spacing, config=config)
    assert len(candidates) == 4
    f = lesion_features(hu, spacing, candidates, np.zeros(2), None, [], config)
    col = LESION_FEATURES.index("fat_distance_mm")
    at = {(int(c.slices[0]), int(np.mean(np.asarray(c.voxels) % 128))): f[i, col] for i, c in enumerate(candidates)}
    assert at[(0, 64)] == pytest.approx(min(22 * pixel_mm, FAT_CAP_MM), abs=1.5 * pixel_mm)
    assert at[(0, 88)] <= 1.5 * pixel_mm and at[(0, 21)] <= 1.5 * pixel_mm
    assert at[(1, 64)] == FAT_CAP_MM


def test_fat_distance_on_a_box_equals_the_whole_slice():
    """The distance transform on each slice's box around its candidates (grown by the cap) gives what it gives on
    the whole slice, capped: blobs of fat in blood, calcium specks scattered over two slices."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    hu = rng.normal(40.0, 25.0, size=(2, 160, 160)).astype(np.float32)
    for z in range(2):
        for y, x in rng.integers(0, 160, size=(6, 2)):
            hu[z, max(y - 4, 0) : y + 4, max(x - 4, 0) : x + 4] = -100.0
        for y, x in rng.integers(5, 155, size=(8, 2)):
            hu[z, y : y + 2, x : x + 2] = 500.0
    spacing, config = (3.0, 0.6, 0.6), ScoringConfig()
    candidates = find_lesions(hu, spacing, config=config)
    f = lesion_features(hu, spacing, candidates, np.zeros(2), None, [], config)[:, LESION_FEATURES.index(
        "fat_distance_mm")]
    for i, c in enumerate(candidates):
        z = int(c.slices[0])
        fat = ndimage.uniform_filter(np.clip(hu[z], None, 60.0), size=3) < -30.0
        whole = ndimage.distance_transform_edt(~fat, sampling=spacing[1:]).reshape(-1)
        pixels = np.asarray(c.voxels) - z * 160 * 160
        assert f[i] == pytest.approx(min(whole[pixels].min(), FAT_CAP_MM))


def test_arc_features_find_calcium_on_the_wall_of_a_round_lumen():
    """In fat at 0.5 mm pixels: an arc of calcium on the rim of a 15 mm disc of blood (aortic wall calcium), the same
    arc with fat at its centre (a curved vessel in fat), a straight calcified segment and a speck."""
    rng = np.random.default_rng(0)
    hu = rng.normal(-100.0, 10.0, size=(1, 256, 256)).astype(np.float32)
    yy, xx = np.mgrid[:256, :256]
    hu[0][(yy - 90) ** 2 + (xx - 90) ** 2 <= 30**2] = 40.0
    for cy, cx in ((90, 90), (200, 60)):
        r, angle = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
        hu[0][(np.abs(r - 30) <= 1.2) & (np.abs(angle) < 0.7)] = 600.0
    hu[0, 20:23, 150:180] = 600.0
    hu[0, 230:233, 230:233] = 600.0
    spacing, config = (2.5, 0.5, 0.5), ScoringConfig()
    candidates = find_lesions(hu, spacing, config=config)
    assert len(candidates) == 4
    f = lesion_features(hu, spacing, candidates, np.zeros(1), None, [], config)
    col = {name: i for i, name in enumerate(LESION_FEATURES)}
    by_row = sorted(range(4), key=lambda i: np.mean(np.asarray(candidates[i].voxels) // 256))
    straight, wall, in_fat, speck = (f[i] for i in by_row)  # rows 21, 90, 200, 231
    assert wall[col["arc_radius_mm"]] == pytest.approx(15.0, rel=0.25)
    assert wall[col["arc_centre_depth_mm"]] >= 0.5 * wall[col["arc_radius_mm"]]
    assert wall[col["arc_lumen_ratio"]] == pytest.approx(1.0, abs=0.3)  # the disc is the arc's own circle
    assert in_fat[col["arc_radius_mm"]] == pytest.approx(15.0, rel=0.25) and in_fat[col["arc_centre_depth_mm"]] == 0.0
    assert in_fat[col["arc_lumen_ratio"]] == 0.0
    assert straight[col["arc_radius_mm"]] > 50.0 and straight[col["arc_centre_depth_mm"]] == 0.0
    assert speck[col["arc_radius_mm"]] == 0.0 and speck[col["arc_centre_depth_mm"]] == 0.0


def test_pooling_by_component_weighs_by_area():
    p = np.array([0.9, 0.3, 0.6, 0.2])
    components = np.array([7, 7, 2, 7])
    areas = np.array([10.0, 2.0, 5.0, 8.0])
    pooled = pool_probabilities(p, components, areas)
    expected = (0.9 * 10 + 0.3 * 2 + 0.2 * 8) / 20  # 0.56: the big confident slice carries the plaque's thin ends
    np.testing.assert_allclose(pooled, [expected, expected, 0.6, expected])
    np.testing.assert_array_equal(pool_probabilities(p, components, areas, "candidate"), p)
    assert pool_probabilities(np.zeros(0), np.zeros(0), np.zeros(0)).size == 0
    with pytest.raises(InputError, match="lesion_pooling: must be one of"):
        pool_probabilities(p, components, areas, "slice")
    with pytest.raises(InputError, match="components: need one per candidate"):
        pool_probabilities(p, components[:3], areas)
    with pytest.raises(InputError, match=r"areas: must be > 0; candidates \[1\] are not"):
        pool_probabilities(p, components, np.array([1.0, 0.0, 1.0, 1.0]))


def test_lesion_features_need_a_map_per_candidate_slice():
    hu, spacing = _chest()
    candidates = find_lesions(hu, spacing)
    with pytest.raises(InputError, match="no CAM map"):
        lesion_features(hu, spacing, candidates, np.zeros(8), np.zeros((1, 64, 64)), [3], ScoringConfig())


def test_thresholds_keep_the_classifier_and_refuse_unknown_features(tmp_path):
    x, y = _toy(300)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    rng = np.random.default_rng(0)
    xf = rng.normal(size=(300, len(LESION_FEATURES)))
    xf[:, :4] = x
    clf = fit_lesion_classifier(xf, y, LESION_FEATURES)
    t = Thresholds(network_name="tiny_cnn", checkpoint="model.pt", checkpoint_sha256=file_sha256(ckpt), t_slice=0.5,
                   t_cam=0.6, cam_layer="layer2", lesion_classifier=clf, t_lesion=0.4)
    save_thresholds(t, tmp_path)
    text = (tmp_path / "thresholds.json").read_text()
    saved = json.loads(text)
    assert saved["decision"] == "lesion classifier" and list(saved)[-1] == "lesion_classifier"
    assert text.splitlines()[1] == '  "network_name": "tiny_cnn",'  # indented for people to read ...
    assert text.splitlines()[-2].startswith('  "lesion_classifier": {"kind":')  # ... but the trees on one line
    back = load_thresholds(tmp_path, ckpt)
    assert back.t_lesion == 0.4 and back.decision == "lesion classifier"
    np.testing.assert_array_equal(back.lesion_classifier.predict_proba(xf), clf.predict_proba(xf))
    # a version 4 file has no lesion_pooling: its candidates were judged one by one
    version_4 = {k: v for k, v in saved.items() if k != "lesion_pooling"} | {"version": 4}
    old = Thresholds.from_dict(version_4)
    assert old.lesion_pooling == "candidate" and old.version == 4
    assert "the lesion classifier's probability >=" in old.to_dict()["rule"]
    pooled = Thresholds.from_dict({**saved, "lesion_pooling": "component"})
    assert "3D component" in pooled.to_dict()["rule"]
    with pytest.raises(InputError, match="lesion_pooling: must be one of"):
        Thresholds.from_dict({**saved, "lesion_pooling": "max"})
    with pytest.raises(InputError, match="t_lesion"):
        Thresholds(network_name="tiny_cnn", checkpoint="m.pt", checkpoint_sha256="", t_slice=0.5, t_cam=0.5,
                   cam_layer="layer2", lesion_classifier=clf)
    t.validation = {"slice_and_cam": {"t_slice": 0.35, "t_cam": 0.6}}
    rule = t.with_rule("slice-cam")
    assert rule.lesion_classifier is None and rule.decision == "slice and CAM thresholds" and rule.t_slice == 0.35
    assert dataclasses.replace(t, lesion_pooling="component").with_rule("slice-cam").lesion_pooling == "candidate"
    assert t.with_rule("classifier") is t and t.with_rule(None) is t
    with pytest.raises(InputError, match="must be one of"):
        t.with_rule("trees")
    with pytest.raises(InputError, match="calibrated without a lesion classifier"):
        rule.with_rule("classifier")
    other = fit_lesion_classifier(x, y, ["slice_probability", "not_a_feature", "cam_mean", "cam_max"])
    with pytest.raises(InputError, match="features this version no longer computes"):
        Thresholds(network_name="tiny_cnn", checkpoint="m.pt", checkpoint_sha256="", t_slice=0.5, t_cam=0.5,
                   cam_layer="layer2", lesion_classifier=other, t_lesion=0.5)


def test_only_the_computed_candidates_are_fitted_and_scored():
    """Rows calibration did not compute (``computed`` False: no classifier is asked about them) are neither fitted
    on nor scored (NaN); a fit set of one class is refused with what to do."""
    fit, val = _collected(4, 150, seed=0), _collected(3, 60, seed=1)
    small = {**DEFAULT_TREE_PARAMS, "max_iter": 20}
    fit["computed"] = np.arange(600) % 3 > 0
    val["computed"] = np.arange(180) % 2 == 0
    fit["features"][~fit["computed"]] = np.nan  # what calibration leaves in rows it did not compute
    classifier, p, _ = cross_fit_lesion_classifier(fit, val, folds=0, tree_params=small)
    assert classifier.fitted_on["n_candidates"] == int(fit["computed"].sum())
    assert np.isnan(p[~val["computed"]]).all() and np.isfinite(p[val["computed"]]).all()
    columns = [LESION_FEATURES.index(f) for f in CLASSIFIER_FEATURES]
    alone = fit_lesion_classifier(fit["features"][fit["computed"]][:, columns], fit["coronary"][fit["computed"]],
                                  CLASSIFIER_FEATURES, small)
    np.testing.assert_array_equal(p[val["computed"]], alone.predict_proba(val["features"][val["computed"]][:, columns]))
    fit["computed"] = fit["coronary"].copy()
    val["computed"] = val["coronary"].copy()
    with pytest.raises(InputError, match="needs coronary and other candidates to learn from.*fit_candidates"):
        cross_fit_lesion_classifier(fit, val, folds=2, tree_params=small)
