"""Thresholds chosen on the validation split, saved beside the checkpoint, refused when missing or mismatched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coronary_calcium.errors import InputError
from coronary_calcium.inference import build_preprocessing, choose_thresholds, load_thresholds
from coronary_calcium.inference.calibration import _cases, _collect, grid_search
from coronary_calcium.inference.lesion_features import candidate_components, dense_components
from coronary_calcium.inference.thresholds import MISSING, Thresholds, file_sha256, save_thresholds
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.networks import create_network, load_checkpoint_weights
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions
from coronary_calcium.train.bundle import BUNDLE_ROOT


def test_calibrate_writes_complete_thresholds(ckpt_dir):
    saved = json.loads((ckpt_dir / "thresholds.json").read_text())
    assert saved["network_name"] == "tiny_cnn" and saved["checkpoint"] == "model.pt"
    assert saved["checkpoint_sha256"] == file_sha256(ckpt_dir / "model.pt")
    assert saved["cam_layer"] == "layer2" and saved["cam_method"] == "gradcam"  # the spec's intermediate layer
    assert saved["hu_windows"] == [[-250.0, 950.0], [130.0, 630.0]] and saved["in_channels"] == 2
    assert saved["image_size"] == [32, 32]
    assert saved["scoring"]["threshold_hu_used"] == 130.0 and saved["scoring"]["connectivity"] == "2d-8"
    v = saved["validation"]
    assert v["split"] == "validation" and v["n_scans"] == 2 and v["n_reference_lesions"] > 0
    grid = v["grid"]
    chosen_cell = grid["f1"][grid["t_slice"].index(v["t_slice"])][grid["t_lesion"].index(v["t_lesion"])]
    assert 0.0 <= v["f1"] <= 1.0 and v["f1"] == pytest.approx(chosen_cell, abs=1e-6)
    # within one reference lesion's F1 of the best, the rule keeping the fewest aortic / valve candidates wins
    assert v["tie_rule"].startswith("among F1 within 1 reference lesion(s) of the best")
    f1, kept = np.array(grid["f1"]), np.array(grid["n_aortic_or_valve_kept"])
    near = f1 >= f1.max() - 1 / v["n_reference_lesions"] - 1e-6
    fewest = kept[near].min()
    assert v["n_aortic_or_valve_kept"] == fewest
    assert v["f1"] == pytest.approx(f1[near & (kept == fewest)].max(), abs=1e-6)
    assert 0.0 <= saved["t_slice"] <= 1.0 and 0.0 <= saved["t_cam"] <= 1.0 and 0.0 < saved["t_lesion"] < 1.0
    # the lesion classifier decides; it was fitted on the training and validation candidates, the rule chosen on
    # out-of-fold validation probabilities (2 validation patients: a fold each)
    assert saved["decision"] == v["decision"] == "lesion classifier"
    assert (v["t_slice"], v["t_lesion"]) == (saved["t_slice"], saved["t_lesion"])
    assert v["lesion_probabilities"] == "out of fold, 2 folds by patient"
    assert saved["lesion_pooling"] == v["lesion_pooling"] == "component" and saved["version"] == 6
    assert saved["field_of_view_centre"] == "heart" and saved["field_of_view_mm"] == 160.0  # train.json's
    fitted = saved["lesion_classifier"]["fitted_on"]
    assert fitted["data"][0].endswith("(train)") and fitted["data"][1].endswith("(validation)")
    assert fitted["n_scans"] == 6 and fitted["n_coronary"] > 0 and len(fitted["seeds"]) == 5
    assert fitted["n_candidates"] > v["n_candidates"]  # training candidates besides the validation ones
    assert v["slice_and_cam"]["t_cam"] == saved["t_cam"]
    cam_grid = v["slice_and_cam_grid"]
    rule = v["slice_and_cam"]
    assert rule["f1"] == pytest.approx(
        cam_grid["f1"][cam_grid["t_slice"].index(rule["t_slice"])][cam_grid["t_cam"].index(rule["t_cam"])], abs=1e-6)
    assert saved["created"][:4].isdigit()
    t = load_thresholds(ckpt_dir / "thresholds.json", ckpt_dir / "model.pt")
    assert (t.t_slice, t.t_cam) == (saved["t_slice"], saved["t_cam"])
    assert load_thresholds(ckpt_dir).checkpoint_sha256 == t.checkpoint_sha256  # folder form, default checkpoint


def test_missing_or_mismatched_thresholds_are_refused(ckpt_copy):
    (ckpt_copy / "thresholds.json").unlink()
    with pytest.raises(InputError, match="thresholds missing: run coronary-calcium calibrate / evaluate first"):
        load_thresholds(ckpt_copy, ckpt_copy / "model.pt")


def test_thresholds_of_other_weights_are_refused(ckpt_copy):
    state = torch.load(ckpt_copy / "model.pt", map_location="cpu", weights_only=True)
    weights = state.get("network", state)
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key] + 1.0  # retrained weights, same file name
    torch.save(state, ckpt_copy / "model.pt")
    with pytest.raises(InputError) as e:
        load_thresholds(ckpt_copy, ckpt_copy / "model.pt")
    assert MISSING in str(e.value) and "sha256" in str(e.value)


def test_grid_search_maximises_f1_with_ties_to_the_lower_slice_threshold():
    # candidates: (slice probability, CAM score); 0 and 1 match reference lesions 0 and 1, 2 and 3 are bone
    prob = np.array([0.9, 0.8, 0.9, 0.2])
    cam = np.array([0.8, 0.7, 0.3, 0.9])
    pairs = np.array([[0, 0], [1, 1]])
    best = grid_search(prob, cam, pairs, 2, [0.0, 0.5, 0.7, 0.85], [0.0, 0.25, 0.5, 0.75])
    assert best["f1"] == 1.0
    # F1 1 holds for t_slice in {0.5, 0.7} x t_cam in {0.5}: the tie goes to the lower t_slice (the bone at 0.2
    # needs t_slice > 0.2)
    assert (best["t_slice"], best["t_cam"]) == (0.5, 0.5)
    assert best["grid"]["f1"][0][0] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_grid_search_prefers_no_aortic_or_valve_calcium_among_near_best_f1():
    # 0-3 coronary (reference lesions 0-3), 4 aortic wall calcium scored like a coronary lesion, 5 a bone
    prob = np.ones(6)
    score = np.array([0.9, 0.85, 0.8, 0.6, 0.7, 0.1])
    pairs = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    aortic = np.array([False, False, False, False, True, False])
    grid = [0.5, 0.65, 0.75]
    free = grid_search(prob, score, pairs, 4, [0.0], grid)
    assert free["t_cam"] == 0.5 and free["f1"] == pytest.approx(8 / 9)  # 4 found, 1 aortic: beats 3 found
    assert "n_aortic_or_valve_kept" not in free
    # 3 found and nothing else (F1 6/7) is within one lesion's worth (1/4) of the best: it wins, keeping no aortic
    preferring = grid_search(prob, score, pairs, 4, [0.0], grid, aortic, 1 / 4)
    assert preferring["t_cam"] == 0.75 and preferring["f1"] == pytest.approx(6 / 7)
    assert preferring["n_aortic_or_valve_kept"] == 0
    assert preferring["grid"]["f1"] == free["grid"]["f1"]  # the same F1 table; only the choice differs
    assert preferring["grid"]["n_aortic_or_valve_kept"] == [[1, 1, 0]]
    # with less slack, F1 alone decides
    assert grid_search(prob, score, pairs, 4, [0.0], grid, aortic, 0.01)["t_cam"] == 0.5


def test_records_and_manifest_give_the_same_thresholds(tiny_manifest, ckpt_dir, trained_run):
    from coronary_calcium.data.slices import slice_records

    t = load_thresholds(ckpt_dir)
    network = load_checkpoint_weights(create_network("tiny_cnn", in_channels=t.in_channels, for_checkpoint=True),
                                      ckpt_dir / "model.pt", "tiny_cnn")
    records = slice_records(tiny_manifest, "validation", progress=False)
    kwargs = dict(image_size=t.image_size, device="cpu", precision=t.validation["precision"], progress=False)
    with pytest.raises(InputError, match="give fit_data"):
        choose_thresholds(network, "tiny_cnn", records, **kwargs)
    with pytest.raises(InputError, match="slice records carry neither the slice increment"):
        choose_thresholds(network, "tiny_cnn", records, fit_data=tiny_manifest, **kwargs)
    from_records = choose_thresholds(network, "tiny_cnn", records, lesion_classifier=False, **kwargs)
    assert from_records.lesion_classifier is None and from_records.decision == "slice and CAM thresholds"
    assert from_records.validation["n_reference_lesions"] == t.validation["n_reference_lesions"]
    assert from_records.validation["n_candidates"] == t.validation["n_candidates"]
    # the same F1 table; the choice may differ, since records cannot tell aortic calcium apart (nothing to prefer)
    np.testing.assert_allclose(from_records.validation["grid"]["f1"], t.validation["slice_and_cam_grid"]["f1"])
    records_grid = from_records.validation["grid"]["f1"]
    assert from_records.validation["f1"] == pytest.approx(max(max(row) for row in records_grid))


def test_collected_components_never_span_two_scans(tiny_manifest, tiny_model):
    cases, patients, _ = _cases(load_manifest(tiny_manifest), "test")
    scoring = tiny_model.thresholds.scoring_config()
    collected = _collect(cases, len(patients), tiny_model.analyzer, scoring, "test", False)
    ids, patient = collected["component"], collected["patient"]
    assert ids.shape == patient.shape == collected["area"].shape and len(set(patients)) == 2
    assert not set(ids[patient == patients[0]]) & set(ids[patient == patients[1]])
    # per scan, the ids are the scan's own 3D components: as many as its candidates' distinct components
    for pid, (_, hu, spacing, _) in zip(patients, _cases(load_manifest(tiny_manifest), "test")[0]):
        candidates = find_lesions(hu, spacing, config=scoring)
        own = candidate_components(dense_components(hu, scoring), candidates)
        assert np.unique(ids[patient == pid]).size == np.unique(own).size


def test_bad_choices_are_refused_before_reading_data(ckpt_dir):
    network = create_network("tiny_cnn")
    with pytest.raises(InputError, match="not a layer"):
        choose_thresholds(network, "tiny_cnn", "/nonexistent/manifest.json", cam_layer="nope")
    with pytest.raises(InputError, match="f1_slack_lesions: must be a number of lesions >= 0 or None, got -1"):
        choose_thresholds(network, "tiny_cnn", "/nonexistent/manifest.json", f1_slack_lesions=-1)
    with pytest.raises(InputError, match="validation_folds: must be 0"):
        choose_thresholds(network, "tiny_cnn", "/nonexistent/manifest.json", validation_folds=1.5)
    with pytest.raises(InputError, match="lesion_pooling: must be one of"):
        choose_thresholds(network, "tiny_cnn", "/nonexistent/manifest.json", lesion_pooling="slice")
    with pytest.raises(InputError, match="2d"):
        Thresholds(network_name="tiny_cnn", checkpoint="m.pt", checkpoint_sha256="", t_slice=0.5, t_cam=0.5,
                   cam_layer="layer2", scoring=ScoringConfig(connectivity="3d-26").to_dict())


def test_one_validation_patient_is_refused_for_cross_fitting_before_reading_images(tiny_manifest, tmp_path):
    raw = json.loads(tiny_manifest.read_text())
    validation = [s for s in raw["scans"] if s["split"] == "validation"]
    for s in validation[1:]:
        s["split"] = "train"
    for s in raw["scans"]:  # files that are not images: the refusal must come before reading any
        for path in (s["image"], s["reference"]["labels"]):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"not an image")
    one = tmp_path / "one_validation.json"
    one.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="needs at least 2 validation patients, got 1: use validation_folds=0"):
        choose_thresholds(create_network("tiny_cnn"), "tiny_cnn", one, image_size=(32, 32), progress=False)
    with pytest.raises(InputError, match="T0"):  # without cross-fitting, the first unreadable image is named
        choose_thresholds(create_network("tiny_cnn"), "tiny_cnn", one, image_size=(32, 32), progress=False,
                          validation_folds=0)


def test_save_and_load_round_trip(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    t = Thresholds(network_name="tiny_cnn", checkpoint="model.pt", checkpoint_sha256=file_sha256(ckpt), t_slice=0.35,
                   t_cam=0.6, cam_layer="layer2", image_size=(64, 64))
    save_thresholds(t, tmp_path)
    back = load_thresholds(tmp_path / "thresholds.json", ckpt)
    assert back.to_dict() == t.to_dict()


def _config_preprocessing(config: str, size, fov):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / config))
    parser["image_size"] = list(size)
    parser["field_of_view_mm"] = fov
    return parser.get_parsed_content("validate#preprocessing" if config == "train.json" else "preprocessing")


@pytest.mark.parametrize("source", ["build_preprocessing", "inference.json"])
def test_preprocessing_equals_the_training_pipeline(source):
    """Slices-as-channels preprocessing (inference.json's, and `build_preprocessing`'s without a config) gives each
    slice exactly what train.json's deterministic transforms give: max-pooled HU, then one [0, 1] channel per HU
    window; with a field of view, cropped / padded first."""
    rng = np.random.default_rng(3)
    hu = rng.normal(0, 400, size=(3, 50, 30)).astype(np.int16).astype(np.float32)
    windows = ((-250.0, 950.0), (130.0, 630.0))
    # 30 mm at 0.8 mm: 38 rows of 50 kept, 30 columns padded; centred on the image, or on a point (the heart's)
    for fov, size, centre in ((None, (40, 24), None), (30.0, (24, 24), None), (30.0, (24, 24), [12.0, 20.0])):
        train_pipeline = _config_preprocessing("train.json", size, fov)
        if source == "inference.json":
            pipeline = _config_preprocessing("inference.json", size, fov)
        else:
            pipeline = build_preprocessing(windows, size, fov)
        sample = {"image": hu, "pixel_spacing": [0.8, 0.8], "fov_centre": centre}
        ours = pipeline(sample)["image"]
        assert ours.shape == (3 * 2, *size)  # each slice's windows together
        ours = ours.reshape(3, 2, *size)
        for k in range(3):
            ref = train_pipeline({"image": hu[k][None].astype(np.int16).astype(np.float32),
                                  "mask": np.zeros((1, 50, 30), np.uint8), "pixel_spacing": [0.8, 0.8],
                                  "fov_centre": [float("nan")] * 2 if centre is None else centre})["image"]
            assert ref.shape == (2, *size)
            assert torch.equal(torch.as_tensor(ours[k]), torch.as_tensor(ref))
        if fov is None:
            pooled = torch.nn.functional.adaptive_max_pool2d(torch.as_tensor(hu[:1]), size)
            assert torch.allclose(ours[0, 1], ((pooled[0] - 130.0) / 500.0).clamp(0, 1))  # calcium window by hand
        elif centre is not None:
            field = torch.full((1, 38, 38), -1024.0)
            field[:, 6:, :28] = torch.as_tensor(hu[:1, :32, 2:30])  # rows -6..31 (6 of air above), columns 2..39
            pooled = torch.nn.functional.adaptive_max_pool2d(field, size)
            assert torch.allclose(ours[0, 0], ((pooled[0] + 250.0) / 1200.0).clamp(0, 1))
        else:
            field = torch.full((1, 38, 38), -1024.0)
            field[:, :, 4:34] = torch.as_tensor(hu[:1, 6:44])  # centred: rows 6..43 kept, 4 columns of air each side
            pooled = torch.nn.functional.adaptive_max_pool2d(field, size)
            assert torch.allclose(ours[0, 0], ((pooled[0] + 250.0) / 1200.0).clamp(0, 1))


def test_channels_must_match_the_hu_windows_and_version_1_files_still_load(tmp_path):
    base = dict(network_name="tiny_cnn", checkpoint="m.pt", checkpoint_sha256="", t_slice=0.5, t_cam=0.5,
                cam_layer="layer2")
    assert Thresholds(**base).in_channels == 2  # one channel per default window
    with pytest.raises(InputError, match="number of HU windows"):
        Thresholds(**base, hu_windows=[[-250, 950]], in_channels=2)
    with pytest.raises(InputError, match="hu_windows"):
        Thresholds(**base, hu_windows=[[950, -250]])
    old = Thresholds.from_dict({**base, "hu_window": [-200, 800], "in_channels": 1, "version": 1})
    assert old.hu_windows == ((-200.0, 800.0),) and old.in_channels == 1
    assert old.field_of_view_mm is None  # files before version 3: trained without a field of view, none applied
    assert Thresholds.from_dict({**base, "field_of_view_mm": 250}).field_of_view_mm == 250.0
    with pytest.raises(InputError, match="field_of_view_mm"):
        Thresholds(**base, field_of_view_mm=-5.0)
    assert old.cam_pooling == "max" and old.cam_gate_layer is None  # earlier files: the maximum, no gating
    with pytest.raises(InputError, match="cam_pooling"):
        Thresholds(**base, cam_pooling="median")
    # files before version 6: a field centred on the image; a heart-centred one needs a size
    v5 = Thresholds.from_dict({**base, "field_of_view_mm": 250, "version": 5})
    assert v5.field_of_view_centre == "image"
    assert Thresholds(**base, field_of_view_mm=160, field_of_view_centre="heart").to_dict()["preprocessing"][
        "field_of_view_centre"] == "heart"
    with pytest.raises(InputError, match="needs field_of_view_mm"):
        Thresholds(**base, field_of_view_centre="heart")
    with pytest.raises(InputError, match="field_of_view_centre"):
        Thresholds(**base, field_of_view_mm=160, field_of_view_centre="aorta")


_BAD_FIELDS = [
    ({"t_slice": float("nan")}, "t_slice: must be a finite number"),
    ({"t_cam": float("inf")}, "t_cam: must be a finite number"),
    ({"t_slice": 1.5}, "t_slice: must be a probability"),
    ({"t_slice": "0.5"}, "t_slice: must be a number"),
    ({"version": 99}, "version: 99 is not a thresholds version"),
    ({"version": 0}, "version: 0 is not a thresholds version"),
    ({"version": "5"}, "version: must be an integer"),
    ({"image_size": "256"}, "image_size: must be [height, width]"),
    ({"image_size": None}, "image_size: must be [height, width]"),
    ({"image_size": [32, "x"]}, "image_size: must be two positive integers"),
    ({"scoring": 130}, "scoring: must be an object"),
    ({"scoring": {"kvp": "high"}}, "scoring"),
    ({"cam_gate_layer": 3}, "cam_gate_layer: must be a string or null"),
    ({"validation": []}, "validation: must be an object"),
    ({"cam_method": ["gradcam"]}, "cam_method: must be a string"),
    ({"in_channels": True}, "in_channels: must be an integer or null"),
    ({"lesion_classifier": [1]}, "lesion_classifier: must be an object or null"),
    ({"field_of_view_centre": None}, "field_of_view_centre: must be a string"),
    ({"field_of_view_centre": "lungs"}, "field_of_view_centre: must be one of"),
]


_IDS = [f"{next(iter(bad))}-{i}" for i, (bad, _) in enumerate(_BAD_FIELDS)]


@pytest.mark.parametrize("bad, message", _BAD_FIELDS, ids=_IDS)
def test_thresholds_fields_of_the_wrong_type_or_value_are_refused_at_load(tmp_path, bad, message):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    t = Thresholds(network_name="tiny_cnn", checkpoint="model.pt", checkpoint_sha256=file_sha256(ckpt), t_slice=0.35,
                   t_cam=0.6, cam_layer="layer2", image_size=(64, 64))
    path = save_thresholds(t, tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **bad}))
    with pytest.raises(InputError, match=MISSING.split(":")[0]) as e:
        load_thresholds(path, ckpt)
    assert message in str(e.value)


def test_the_classifier_is_fitted_on_the_candidates_it_can_be_asked_about(tiny_manifest, ckpt_dir):
    """By default the trees see only what the anatomy rule leaves them (and the rest of those 3D components);
    fit_candidates="all" fits them on every candidate, as before version 0.15.0."""
    t = load_thresholds(ckpt_dir)
    network = load_checkpoint_weights(create_network("tiny_cnn", in_channels=t.in_channels, for_checkpoint=True),
                                      ckpt_dir / "model.pt", "tiny_cnn")
    kwargs = dict(image_size=t.image_size, device="cpu", precision=t.validation["precision"], progress=False)
    every = choose_thresholds(network, "tiny_cnn", tiny_manifest, fit_candidates="all", **kwargs)
    judged, fitted_all = t.lesion_classifier.fitted_on, every.lesion_classifier.fitted_on
    assert fitted_all["n_candidates"] > judged["n_candidates"] > 0
    assert fitted_all["n_coronary"] >= judged["n_coronary"] > 0
    assert fitted_all["n_candidates"] == every.validation["n_candidates"] + _training_candidates(tiny_manifest, t)


def _training_candidates(manifest, t) -> int:
    from coronary_calcium.scoring.agatston import find_lesions

    cases, _, _ = _cases(load_manifest(manifest), "train")
    return sum(len(find_lesions(hu, spacing, config=t.scoring_config())) for _, hu, spacing, _ in cases)
