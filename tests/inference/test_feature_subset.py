"""Inference computes lesion features only for the candidates the classifier judges: the same bits, the same
decision, the same score as computing them for every candidate (what calibration does)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.inference import infer_scan
from coronary_calcium.inference.candidates import find_candidates
from coronary_calcium.inference.decision import ANATOMY_RULE_FEATURES, anatomy_rule, decide
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.scoring.agatston import score_lesions


@pytest.fixture(scope="module")
def scans(tiny_manifest):
    return [read_scan(s)[0] for s in load_manifest(tiny_manifest).scans]


@pytest.mark.parametrize("pooling, t_slice, t_lesion", [("component", None, None), ("candidate", 0.0, 0.0),
                                                        ("component", 0.0, 0.5)])
def test_subset_features_match_all_candidates_features(tiny_model, scans, pooling, t_slice, t_lesion):
    t = tiny_model.thresholds
    t = dataclasses.replace(t, lesion_pooling=pooling, t_slice=t.t_slice if t_slice is None else t_slice,
                            t_lesion=t.t_lesion if t_lesion is None else t_lesion)
    model = dataclasses.replace(tiny_model, thresholds=t)
    n_skipped = n_kept = 0
    for volume in scans:
        result = infer_scan(volume, model)
        subset = result.candidates
        every = find_candidates(volume.hu, volume.spacing, model.analyzer, t.scoring_config(),
                                slice_thickness=volume.slice_thickness, features=True)
        assert every.computed is None and subset.computed is not None and len(every) == len(subset)
        rows = subset.computed
        # the computed rows to the last bit, and every candidate's anatomy (the rule's input) likewise
        assert np.array_equal(subset.features[rows], every.features[rows])
        assert np.isnan(subset.features[~rows]).any(axis=1).all()
        broken = anatomy_rule(every.feature_columns(ANATOMY_RULE_FEATURES))
        assert np.array_equal(anatomy_rule(subset.feature_columns(ANATOMY_RULE_FEATURES)), broken)
        assert [subset.cam_scores[i] for i in np.flatnonzero(rows)] == [every.cam_scores[i]
                                                                        for i in np.flatnonzero(rows)]
        full = decide(every, t)
        assert np.array_equal(result.kept, full.kept)
        assert np.array_equal(result.lesion_probabilities[rows], full.lesion_probabilities[rows])
        assert np.isnan(result.lesion_probabilities[~rows]).all()
        # what is not computed is rejected by the slice threshold or the anatomy rule, whatever its probability
        assert not ((subset.slice_probabilities >= t.t_slice) & (broken < 0) & ~rows).any()
        kept = [les for les, k in zip(every, full.kept) if k]
        again = score_lesions(kept, float(volume.spacing[0]), slice_thickness=volume.slice_thickness,
                              config=t.scoring_config())
        assert (result.score.agatston, result.score.volume_mm3, result.score.mass_mg) == (
            again.agatston, again.volume_mm3, again.mass_mg)
        d = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # no NaN in result.json
        skipped = [r for r in d["rejected_candidates"] if r["lesion_probability"] is None]
        assert len(skipped) == int((~rows).sum())
        n_skipped += len(skipped)
        n_kept += len(result.lesions)
    assert n_skipped > 0 and (n_kept > 0 or t_lesion is None)


def test_a_subset_must_hold_what_the_classifier_judges(tiny_model, scans):
    """decide refuses candidates whose features are missing where the rule needs them, and the option needs
    features."""
    t = dataclasses.replace(tiny_model.thresholds, t_slice=0.0, lesion_pooling="candidate")
    analyzer, config = tiny_model.analyzer, t.scoring_config()

    def no_features(volume):
        return find_candidates(volume.hu, volume.spacing, analyzer, config, features=True,
                               feature_subset=lambda found: np.zeros(len(found), dtype=bool))

    # a scan with candidates that anatomy allows and others it rejects
    def mixed(found):
        allowed = anatomy_rule(found.feature_columns(ANATOMY_RULE_FEATURES)) < 0
        return allowed.any() and not allowed.all()

    volume, none = next((v, found) for v, found in ((v, no_features(v)) for v in scans) if mixed(found))
    assert not none.computed.any() and np.isnan(none.features).any(axis=1).all()
    with pytest.raises(InputError, match="features=True"):
        find_candidates(volume.hu, volume.spacing, analyzer, config, feature_subset=lambda found: None)
    with pytest.raises(InputError, match="one boolean per candidate"):
        find_candidates(volume.hu, volume.spacing, analyzer, config, features=True,
                        feature_subset=lambda found: [True])
    with pytest.raises(InputError, match="must judge them"):
        decide(none, t)
    # a candidate the anatomy rule rejects, whose 3D component (bone through several slices) holds others
    broken = anatomy_rule(none.feature_columns(ANATOMY_RULE_FEATURES)) >= 0
    shared = np.flatnonzero(broken & (np.bincount(none.components)[none.components] > 1))
    assert shared.size
    rows = np.ones(len(none), dtype=bool)
    rows[shared[0]] = False
    cut = find_candidates(volume.hu, volume.spacing, analyzer, config, features=True,
                          feature_subset=lambda found: rows)
    decide(cut, t)  # judged one by one, its features are not needed
    with pytest.raises(InputError, match="3D component"):
        decide(cut, dataclasses.replace(t, lesion_pooling="component"))


def test_calibration_fits_the_classifier_on_what_it_is_asked_about_without_the_network(tiny_model, scans):
    """The fit set's candidates: without the network, the same measured features; whole rows only for those a
    classifier can judge (anatomy allows them, or their 3D component), which are the rows the fit uses."""
    from coronary_calcium.inference.calibration import CLASSIFIER_FEATURES, _collect, _reads_network
    from coronary_calcium.inference.decision import classifier_judges
    from coronary_calcium.inference.lesion_features import feature_columns

    config = tiny_model.thresholds.scoring_config()
    assert not _reads_network(CLASSIFIER_FEATURES) and _reads_network(("slice_probability", "log_area_mm2"))
    volume = scans[0]
    with_net = find_candidates(volume.hu, volume.spacing, tiny_model.analyzer, config, features=True)
    without = find_candidates(volume.hu, volume.spacing, tiny_model.analyzer, config, features=True, network=False)
    assert len(with_net) == len(without) > 0 and np.isnan(without.probabilities).all()
    assert without.cam_maps.shape[0] == 0 and all(s is None for s in without.cam_scores)
    assert np.array_equal(feature_columns(without.features, CLASSIFIER_FEATURES),
                          feature_columns(with_net.features, CLASSIFIER_FEATURES))
    assert np.isnan(feature_columns(without.features, ("slice_probability", "cam_mean", "cam_max"))).all()

    cases = [(f"P{i}", v.hu, v.spacing, np.zeros(v.shape, np.uint8)) for i, v in enumerate(scans[:3])]
    every = _collect(cases, len(cases), tiny_model.analyzer, config, "all", False)
    judged = _collect(cases, len(cases), tiny_model.analyzer, config, "judged", False, network=False,
                      lesion_pooling="component")
    assert every["computed"].all() and every["probability"].size == judged["probability"].size
    assert np.isnan(judged["probability"]).all() and np.isnan(judged["cam"]).all()
    rows = judged["computed"]
    assert 0 < rows.sum() < rows.size  # the tiny scans' spine and body-edge noise are never judged
    assert np.array_equal(feature_columns(judged["features"][rows], CLASSIFIER_FEATURES),
                          feature_columns(every["features"][rows], CLASSIFIER_FEATURES))
    assert np.isnan(judged["features"][~rows]).any(axis=1).all()
    assert np.array_equal(rows[:len(with_net)], classifier_judges(with_net, None, "component"))


def test_fit_data_shared_by_worker_processes_gives_the_same_candidates(tiny_model, scans):
    """Two forked processes collect the fit scans (no network) exactly as one process does, in order; a bad
    ``workers`` is refused before any image is read."""
    from coronary_calcium.inference import choose_thresholds
    from coronary_calcium.inference.calibration import _collect

    config = tiny_model.thresholds.scoring_config()
    cases = [(f"P{i}", v.hu, v.spacing, np.zeros(v.shape, np.uint8)) for i, v in enumerate(scans)]
    one = _collect(cases, len(cases), tiny_model.analyzer, config, "one", False, network=False,
                   lesion_pooling="component", workers=1)
    two = _collect(iter(cases), len(cases), tiny_model.analyzer, config, "two", False, network=False,
                   lesion_pooling="component", workers=2)
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert np.array_equal(value, two[key], equal_nan=value.dtype.kind == "f") if isinstance(value, np.ndarray) \
            else value == two[key], key
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="workers"):
            choose_thresholds(tiny_model.analyzer.network, "tiny_cnn", [], workers=bad)
    with pytest.raises(InputError, match="fit_candidates"):
        choose_thresholds(tiny_model.analyzer.network, "tiny_cnn", [], fit_candidates="some")
