"""One scan through the model: keep / reject rule, totals, lesion records, precision, refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from coronary_calcium.errors import InputError
from coronary_calcium.inference import infer_scan, load_model
from coronary_calcium.inference.decision import ANATOMY_REASONS, ANATOMY_RULE_FEATURES, FAT_RULE_CODE, anatomy_allows
from coronary_calcium.labels import AORTIC, LAD
from coronary_calcium.inference.model import SliceAnalyzer
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.scoring.agatston import score_scan


@pytest.fixture(scope="module")
def test_scan(tiny_manifest):
    return read_scan(load_manifest(tiny_manifest).split("test")[0])


def test_kept_lesions_follow_the_rule_and_sum_to_the_totals(tiny_model, test_scan):
    volume, labels = test_scan
    result = infer_scan(volume, tiny_model)
    t = tiny_model.thresholds
    assert result.probabilities.shape == (volume.shape[0],)
    assert np.all((result.probabilities >= 0) & (result.probabilities <= 1))
    assert t.decision == "lesion classifier" and result.lesion_probabilities.shape == (len(result.candidates),)
    # component pooling: each candidate judged by the area-weighted mean probability of its 26-connected 3D component
    assert t.lesion_pooling == "component"
    components, _ = ndimage.label(volume.hu >= 130.0, structure=np.ones((3, 3, 3), dtype=bool))
    ids = np.array([components.reshape(-1)[c.voxels[0]] for c in result.candidates])
    areas = np.array([c.total_area_mm2 for c in result.candidates])
    anatomy = result.decision.anatomy_ok  # see test_anatomy_rule_rejects_bone_and_the_body_wall
    # features (and probabilities) only for the candidates the classifier judges (those the geometric part of the
    # anatomy rule allows, the fat rule reading their features), with the rest of their components
    geometric = anatomy_allows(result.candidates.feature_columns(ANATOMY_RULE_FEATURES))
    assert not (anatomy & ~geometric).any()
    judged = (result.candidates.slice_probabilities >= t.t_slice) & geometric
    computed = result.candidates.computed
    assert np.array_equal(computed, np.isin(ids, ids[judged])) and not computed.all()
    for c, (lesion, i, kept, pooled) in enumerate(zip(result.candidates, ids, result.kept,
                                                      result.component_probabilities)):
        if not computed[c]:
            assert np.isnan(pooled) and np.isnan(result.lesion_probabilities[c]) and not kept
            continue
        same = ids == i
        expected = float(np.sum(result.lesion_probabilities[same] * areas[same]) / np.sum(areas[same]))
        assert pooled == pytest.approx(expected, abs=1e-12)
        p = result.probabilities[lesion.slices[0]]
        assert kept == (p >= t.t_slice and expected >= t.t_lesion and anatomy[c])
    for cam in result.cam_scores:
        assert cam is not None and 0.0 <= cam <= 1.0  # normalised CAM inside the lesion
    d = result.to_dict()
    assert all(les["component_probability"] >= t.t_lesion for les in d["lesions"])
    for rej in d["rejected_candidates"]:
        below = (f"slice probability < {t.t_slice:g}" if rej["slice_probability"] < t.t_slice
                 else f"component probability < {t.t_lesion:g}")
        assert rej["reason"] == below or rej["reason"].startswith(("in bone or within", "farther than 8 mm from fat"))
        if rej["lesion_probability"] is None:  # not judged by the classifier: rejected by the rules before it
            assert rej["component_probability"] is None and rej["reason"] != f"component probability < {t.t_lesion:g}"
    assert any(rej["lesion_probability"] is None for rej in d["rejected_candidates"])
    assert d["model"]["decision"] == "lesion classifier" and d["model"]["t_lesion"] == t.t_lesion
    assert d["model"]["lesion_pooling"] == "component"
    assert len(d["lesions"]) == int(result.kept.sum()) == d["totals"]["n_lesions"]
    assert len(d["lesions"]) + len(d["rejected_candidates"]) == d["n_candidates"]
    for key in ("agatston", "volume_mm3", "mass_mg"):
        assert sum(les[key] for les in d["lesions"]) == pytest.approx(d["totals"][key])
    assert d["categories"]["5-class"] == d["category"] and set(d["categories"]) == {"5-class", "4-class", "clinical"}
    assert all(les["artery"] == "unknown" for les in d["lesions"])
    assert any("assumed calibration factor" in n for n in d["notes"])
    assert d["model"]["t_slice"] == t.t_slice and d["model"]["checkpoint_sha256"] == t.checkpoint_sha256
    mask = result.lesion_mask()
    for i, lesion in enumerate(result.lesions, start=1):
        assert np.all(mask.reshape(-1)[lesion.voxels] == i)
        rec = d["lesions"][i - 1]
        z, y, x = rec["centroid_voxel_zyx"]
        lps = volume.affine_lps() @ np.array([x, y, z, 1.0])
        assert rec["centroid_lps_mm"] == pytest.approx(lps[:3].tolist(), abs=1e-2)
        assert volume.hu.reshape(-1)[lesion.voxels].max() == rec["peak_hu"]
    assert int((mask > 0).sum()) == sum(les.n_voxels for les in result.lesions)


def test_kept_candidates_score_as_the_kept_voxels_scored_afresh(tiny_model, tiny_manifest):
    """The kept candidates are scored as found (`score_lesions`); scoring their voxels afresh with `score_scan` (the
    path before candidates were one record) gives the same lesions and totals to the last digit."""
    scans = [read_scan(s) for s in load_manifest(tiny_manifest).scans]
    t = dataclasses.replace(tiny_model.thresholds, t_slice=0.0, t_lesion=0.0)  # keep every candidate: many lesions
    model = dataclasses.replace(tiny_model, thresholds=t)
    n_lesions = 0
    for volume, labels in scans:
        for named in (None, labels):
            result = infer_scan(volume, model, labels=named)
            again = score_scan(volume.hu, volume.spacing, mask=result.lesion_mask() > 0,
                               slice_thickness=volume.slice_thickness, config=t.scoring_config())
            assert [les.to_dict() | {"label": 0, "artery": "unknown"} for les in result.lesions] == [
                les.to_dict() for les in again.lesions]
            assert (result.score.agatston, result.score.volume_mm3, result.score.mass_mg) == (
                again.agatston, again.volume_mm3, again.mass_mg)
            assert result.score.categories == again.categories
            n_lesions += len(result.lesions)
    assert n_lesions > 10


def test_slim_results_keep_the_kept_lesions_voxels(tiny_model, test_scan):
    volume, _ = test_scan
    t = dataclasses.replace(tiny_model.thresholds, t_slice=0.0, t_lesion=0.5)
    result = infer_scan(volume, dataclasses.replace(tiny_model, thresholds=t)).slim()
    assert result.kept.any() and not result.kept.all()
    assert result.cam_maps is None
    for lesion, kept in zip(result.candidates, result.kept):
        assert (lesion.voxels is not None) == bool(kept)
    assert all(les.voxels is not None for les in result.lesions)


def test_without_a_classifier_the_slice_and_cam_rule_decides(tiny_model, test_scan):
    volume, _ = test_scan
    t = dataclasses.replace(tiny_model.thresholds, lesion_classifier=None, t_lesion=None)
    result = infer_scan(volume, dataclasses.replace(tiny_model, thresholds=t))
    assert result.lesion_probabilities is None and result.model["decision"] == "slice and CAM thresholds"
    for lesion, cam, kept in zip(result.candidates, result.cam_scores, result.kept):
        p = result.probabilities[lesion.slices[0]]
        assert kept == (p >= t.t_slice and cam is not None and cam >= t.t_cam)
    reasons = {r["reason"] for r in result.to_dict()["rejected_candidates"]}
    assert reasons <= {f"slice probability < {t.t_slice:g}", f"CAM score < {t.t_cam:g}"}


def test_candidate_pooling_judges_each_candidate_alone(tiny_model, test_scan):
    """Thresholds files before version 5 have no lesion_pooling: each candidate by its own probability."""
    volume, _ = test_scan
    t = dataclasses.replace(tiny_model.thresholds, lesion_pooling="candidate", t_lesion=0.5)
    result = infer_scan(volume, dataclasses.replace(tiny_model, thresholds=t))
    assert result.component_probabilities is None
    for lesion, q, kept, ok in zip(result.candidates, result.lesion_probabilities, result.kept,
                                   result.decision.anatomy_ok):
        assert kept == (result.probabilities[lesion.slices[0]] >= t.t_slice and q >= 0.5 and ok)
    d = result.to_dict()
    assert all("component_probability" not in les for les in d["lesions"] + d["rejected_candidates"])
    reasons = {r["reason"] for r in d["rejected_candidates"]}
    assert reasons <= {f"slice probability < {t.t_slice:g}", "lesion probability < 0.5",
                       "in bone or within 10 mm of the body outline", ANATOMY_REASONS[FAT_RULE_CODE]}


def test_reference_labels_name_arteries_but_do_not_change_the_decision(tiny_model, test_scan):
    volume, labels = test_scan
    plain = infer_scan(volume, tiny_model)
    named = infer_scan(volume, tiny_model, labels=labels)
    assert named.agatston == plain.agatston and np.array_equal(named.kept, plain.kept)
    arteries = {les["artery"] for les in named.to_dict()["lesions"]}
    assert arteries <= {"LAD", "unknown"}
    assert sum(d["agatston"] for d in named.score.per_artery.values()) == pytest.approx(named.agatston)


def test_an_artery_model_names_each_kept_lesion_when_a_heart_is_found(tiny_model):
    """The thresholds' artery model names kept lesions from their place relative to the heart (a synthetic chest
    with lungs and a heart); the reference labels are then recorded beside, not used. Without a heart (the tiny
    scans have no lungs) every lesion stays "unknown" and the note says why."""
    from coronary_calcium.inference.arteries import fit_artery_model
    from coronary_calcium.synth.config import SynthConfig
    from coronary_calcium.synth.phantom import generate_patient

    rng = np.random.default_rng(0)
    places = {"LM": (0.2, -0.4, -0.9), "LAD": (0.5, -0.8, 0.0), "LCX": (0.9, 0.3, -0.2), "RCA": (-0.9, -0.3, 0.1)}
    x = np.concatenate([rng.normal(p, 0.2, size=(20, 3)) for p in places.values()])
    arteries = fit_artery_model(x, np.repeat(list(places), 20))
    thresholds = dataclasses.replace(tiny_model.thresholds, artery_model=arteries)
    model = dataclasses.replace(tiny_model, thresholds=thresholds)
    model.thresholds.t_slice, model.thresholds.t_lesion = 0.0, 0.0  # keep every candidate the anatomy rule allows
    patient = next(p for p in (generate_patient(SynthConfig(matrix=256, n_slices=(24, 24)), i) for i in range(20))
                   if np.isin(p.labels, [1, 2, 3, 4]).any())
    result = infer_scan(patient.volume, model, labels=patient.labels)
    records = result.to_dict()["lesions"]
    assert records and all(r["artery"] in places and 0.25 <= r["artery_probability"] <= 1 for r in records)
    assert all("reference_label" in r for r in records)
    assert any(n.startswith("arteries assigned by the artery model") for n in result.notes)
    assert result.to_dict()["model"]["artery_model"] == list(places)
    assert sum(d["agatston"] for d in result.score.per_artery.values()) == pytest.approx(result.agatston)
    hu = np.full((3, 40, 56), -1000.0, np.float32)
    hu[:, 5:35, 8:48] = 40.0
    hu[:, 18:22, 26:30] = 400.0  # a 4 mm^2 deposit in a block of soft tissue in air: no lungs, no heart
    no_heart = infer_scan(CTVolume(hu=hu, spacing=(3.0, 0.5, 0.5)), model)
    assert all(r["artery"] == "unknown" and "artery_probability" not in r for r in no_heart.to_dict()["lesions"])
    assert any("no heart found, so the artery model" in n for n in no_heart.notes)


def test_bf16_keeps_the_decisions(ckpt_dir, test_scan):
    volume, _ = test_scan
    fp32 = load_model(ckpt_dir, device="cpu", precision="fp32")
    bf16 = load_model(ckpt_dir, device="cpu", precision="bf16", channels_last=True)
    try:
        a, b = infer_scan(volume, fp32), infer_scan(volume, bf16)
    finally:
        fp32.close()
        bf16.close()
    assert np.abs(a.probabilities - b.probabilities).max() < 0.02
    # decisions may only differ for slices / candidates right at a threshold
    t = fp32.thresholds
    clear = np.abs(a.probabilities - t.t_slice) > 0.02
    assert np.array_equal((a.probabilities >= t.t_slice)[clear], (b.probabilities >= t.t_slice)[clear])


def test_volumes_that_cannot_be_scored_are_refused(tiny_model, test_scan):
    volume, _ = test_scan
    with pytest.raises(InputError, match="Hounsfield"):
        infer_scan(dataclasses.replace(volume, hu=volume.hu - volume.hu.min()), tiny_model)  # unsigned, no rescale
    other_kvp = infer_scan(dataclasses.replace(volume, meta={"kvp": 100.0, "modality": "CT"}), tiny_model)
    assert any("100 kVp" in n for n in other_kvp.notes)
    with pytest.raises(InputError, match="spacing"):
        infer_scan(dataclasses.replace(volume, spacing=(0.0, 1.0, 1.0)), tiny_model)
    with pytest.raises(InputError, match="not CT"):
        infer_scan(dataclasses.replace(volume, meta={"modality": "MR"}), tiny_model)
    bad = volume.hu.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        infer_scan(dataclasses.replace(volume, hu=bad), tiny_model)


def test_cam_maps_are_on_the_original_matrix(tiny_model):
    rng = np.random.default_rng(1)
    hu = rng.normal(0, 50, size=(3, 40, 56)).astype(np.float32)
    analyzer: SliceAnalyzer = tiny_model.analyzer
    maps = analyzer.cam_maps(hu, [0, 2], pixel_spacing=(0.5, 0.5))
    assert maps.shape == (2, 40, 56) and maps.dtype == np.float32
    assert np.all((maps >= 0) & (maps <= 1))
    assert analyzer.probabilities(hu, pixel_spacing=(0.5, 0.5)).shape == (3,)
    fov = dataclasses.replace(analyzer, field_of_view_mm=16.0)  # 32 x 32 pixels at 0.5 mm, centred on the 40 x 56
    with pytest.raises(InputError, match="pixel spacing"):
        fov.preprocess(hu)
    with pytest.raises(InputError, match="cam_pooling"):  # refused when built, before any forward pass
        dataclasses.replace(analyzer, cam_pooling="median")
    framed = fov.cam_maps(hu, [0, 2], pixel_spacing=(3.0, 0.5, 0.5))
    assert framed.shape == (2, 40, 56) and np.all((framed >= 0) & (framed <= 1))
    assert framed[:, :, :12].max() == 0 and framed[:, :, 44:].max() == 0  # outside the 16 mm field: no CAM
    assert framed[:, 4:36, 12:44].max() > 0
    # centred on a point (the heart's): a 32 x 32 field around row 10, column 40 spans rows -5..26, columns 25..56
    shifted = fov.cam_maps(hu, [0, 2], pixel_spacing=(3.0, 0.5, 0.5), centre=(10.0, 40.0))
    assert shifted[:, 27:].max() == 0 and shifted[:, :, :25].max() == 0 and shifted[:, :27, 25:].max() > 0
    x = fov.preprocess(hu, (3.0, 0.5, 0.5), centre=(10.0, 40.0))
    assert torch.equal(x[:, :, :5], torch.zeros_like(x[:, :, :5]))  # 5 rows of air above the slice, every window
    fov.close()
    empty = CTVolume(hu=np.full((2, 40, 56), -1000.0, np.float32), spacing=(3.0, 0.5, 0.5))
    result = infer_scan(empty, tiny_model, scan_id="air")
    assert result.agatston == 0.0 and result.category == "0" and len(result.candidates) == 0
    # the model looks at a heart-centred field (train.json); without a heart the note says where it looked instead
    assert tiny_model.analyzer.field_of_view_centre == "heart"
    assert any(n.startswith("network: no heart found") and "centred on the image" in n for n in result.notes)


def test_candidate_cam_scores_by_max_or_mean():
    """A small deposit inside the map's hot spot and a large bright component that only touches it: by the maximum
    both score high, by the mean only the deposit does."""
    from coronary_calcium.inference.candidates import candidate_cam_scores
    from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions

    hu = np.full((2, 20, 20), 40.0, np.float32)
    hu[1, 4:6, 4:6] = 400.0  # deposit, 4 pixels
    hu[1, 10:20, 0:20] = 700.0  # "bone", 200 pixels
    maps = np.zeros((1, 20, 20), np.float32)
    maps[0, 2:11, 2:8] = 1.0  # hot spot over the deposit and one row of the bone
    lesions = sorted(find_lesions(hu, (3.0, 1.0, 1.0), config=ScoringConfig()), key=lambda les: les.area_mm2[0])
    assert [les.area_mm2[0] for les in lesions] == [4.0, 200.0]
    assert candidate_cam_scores(lesions, hu.shape, maps, [1]) == [1.0, 1.0]
    assert candidate_cam_scores(lesions, hu.shape, maps, [1], "mean") == [1.0, pytest.approx(6 / 200)]
    assert candidate_cam_scores(lesions, hu.shape, maps, [0]) == [None, None]  # no map on their slice
    with pytest.raises(InputError, match="cam_pooling"):
        candidate_cam_scores(lesions, hu.shape, maps, [1], "median")


def test_anatomy_rule_rejects_bone_the_body_wall_and_calcium_far_from_fat(tiny_model, test_scan):
    """With both thresholds at 0 only the anatomy rule rejects: candidates in bone or within MIN_BODY_DEPTH_MM of
    the body outline (the tiny scans' "spine" lies at the body's edge), then those farther than MAX_FAT_DISTANCE_MM
    from fat and lung (the tiny scans' aortic calcium, in soft tissue; their coronary specks lie in fat), each with
    the part of the rule it broke."""
    from coronary_calcium.inference.decision import ANATOMY_RULE_FEATURES, MAX_FAT_DISTANCE_MM, anatomy_rule

    volume, labels = test_scan
    t = dataclasses.replace(tiny_model.thresholds, t_slice=0.0, t_lesion=0.0)
    result = infer_scan(volume, dataclasses.replace(tiny_model, thresholds=t))
    geometric = anatomy_rule(result.candidates.feature_columns(ANATOMY_RULE_FEATURES))
    broken = result.decision.anatomy_broken
    far = result.candidates.feature_columns(("fat_distance_mm",))[:, 0] > MAX_FAT_DISTANCE_MM
    assert np.array_equal(broken, np.where(geometric >= 0, geometric, np.where(far, FAT_RULE_CODE, -1)))  # no arcs
    assert np.array_equal(result.kept, broken < 0) and (geometric >= 0).any() and far.any()
    truth = [int(np.bincount(labels.reshape(-1)[np.asarray(c.voxels)]).argmax()) for c in result.candidates]
    assert {truth[i] for i in np.flatnonzero(broken == FAT_RULE_CODE)} == {AORTIC}
    assert all(truth[i] == LAD for i in np.flatnonzero(result.kept))
    reasons = {r["reason"] for r in result.to_dict()["rejected_candidates"]}
    assert reasons == {ANATOMY_REASONS[int(b)] for b in broken[broken >= 0]} and ANATOMY_REASONS[0] in reasons


def test_anatomy_rule_parts():
    """Each part of the rule on its own, the first broken part named; without a heart region (heart_* = 0) the
    position bounds hold."""
    from coronary_calcium.inference.decision import (MAX_BEHIND_LUNG, MAX_HEART_RADII_ALONG_Z,
                                                     MAX_HEART_RADII_IN_PLANE, MIN_BODY_DEPTH_MM, anatomy_allows,
                                                     anatomy_rule)

    ok = [MIN_BODY_DEPTH_MM, 0.0, 0.0, 0.0, 0.0, 0.0]
    rows = [ok, [MIN_BODY_DEPTH_MM - 0.1, 0, 0, 0, 0, 0], [50, 1, 0, 0, 0, 0], [50, 0, MAX_BEHIND_LUNG, 0, 0, 0],
            [50, 0, 0, 1.2, -1.2, 0], [50, 0, 0, 1.5, 1.5, 0], [50, 0, 0, 0, 0, -MAX_HEART_RADII_ALONG_Z - 0.01],
            [5, 1, 1, 3, 3, 3], [50, 0, 0, 0, MAX_HEART_RADII_IN_PLANE, MAX_HEART_RADII_ALONG_Z]]
    assert anatomy_rule(rows).tolist() == [-1, 0, 0, 1, -1, 2, 2, 0, -1]
    assert anatomy_allows(rows).tolist() == [True, False, False, False, True, False, False, False, True]
    from coronary_calcium.inference.decision import (AORTIC_ARC_MAX_LUMEN, AORTIC_ARC_RADIUS_MM, ARC_RULE_CODE,
                                                     MAX_FAT_DISTANCE_MM, tissue_rule)

    # the tissue rule: the fat bound, then an arc of aortic radius whose centre lies at least half a radius deep in a
    # soft-tissue region of at most AORTIC_ARC_MAX_LUMEN times its circle; without computed features (NaN) neither
    low, high = AORTIC_ARC_RADIUS_MM
    lumen = AORTIC_ARC_MAX_LUMEN
    rows = [[np.nan] * 4, [0.0] * 4, [MAX_FAT_DISTANCE_MM, 0, 0, 0], [MAX_FAT_DISTANCE_MM + 0.01, 0, 0, 0],
            [1.0, 15.0, 7.5, 1.0], [1.0, 15.0, 7.4, 1.0], [1.0, low - 0.1, 30.0, 1.0], [1.0, high + 0.1, 30.0, 1.0],
            [1.0, low, low, lumen], [1.0, 15.0, 15.0, lumen + 0.01], [1.0, 15.0, 15.0, 0.0], [20.0, 15.0, 15.0, 1.0]]
    assert tissue_rule(rows).tolist() == [-1, -1, -1, FAT_RULE_CODE, ARC_RULE_CODE, -1, -1, -1, ARC_RULE_CODE, -1,
                                          -1, FAT_RULE_CODE]
