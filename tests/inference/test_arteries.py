"""The artery model: fitted on positions relative to the heart, stored as numbers, refused when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coronary_calcium.errors import InputError
from coronary_calcium.inference.arteries import ARTERY_FEATURES, ArteryModel, artery_assignment, fit_artery_model

# Where each artery runs relative to the heart centre, in heart radii (dx: patient left, dy: posterior, dz: slices)
PLACES = {"LM": (0.2, -0.4, -0.9), "LAD": (0.5, -0.8, 0.0), "LCX": (0.9, 0.3, -0.2), "RCA": (-0.9, -0.3, 0.1)}


def _positions(n_per_artery: int, seed: int, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(p, spread, size=(n_per_artery, 3)) for p in PLACES.values()])
    y = np.repeat(list(PLACES), n_per_artery)
    return x, y


def test_fitted_model_names_the_arteries_of_new_positions_and_survives_json():
    x, y = _positions(40, seed=0)
    model = fit_artery_model(x, y, {"data": ["train"]})
    assert model.arteries == ("LM", "LAD", "LCX", "RCA") and model.features == ARTERY_FEATURES
    assert model.fitted_on == {"data": ["train"], "n_candidates": {a: 40 for a in PLACES}}
    new_x, new_y = _positions(25, seed=1)
    names, probability = model.assign(new_x)
    assert np.mean(np.asarray(names) == new_y) > 0.95
    assert np.all((probability > 0.25) & (probability <= 1.0))
    p = model.predict_proba(new_x)
    assert p.shape == (100, 4) and np.allclose(p.sum(axis=1), 1.0)
    back = ArteryModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.array_equal(back.predict_proba(new_x), p)
    assert model.assign(np.zeros((0, 3)))[0] == []


def test_two_arteries_and_too_few_candidates():
    x, y = _positions(30, seed=2)
    two = np.isin(y, ["LAD", "RCA"])
    model = fit_artery_model(x[two], y[two])
    assert model.arteries == ("LAD", "RCA")
    names, _ = model.assign(np.array([PLACES["LAD"], PLACES["RCA"]]))
    assert names == ["LAD", "RCA"]
    # an artery with fewer than 3 candidates is left out; fewer than two arteries left: no model
    few = np.concatenate([np.flatnonzero(y == "LAD"), np.flatnonzero(y == "RCA")[:2]])
    assert fit_artery_model(x[few], y[few]) is None
    with pytest.raises(InputError, match="unknown artery names"):
        fit_artery_model(x, np.where(y == "LM", "aorta", y))
    with pytest.raises(InputError, match="one per row"):
        fit_artery_model(x, y[:-1])


@pytest.mark.parametrize("change, message", [
    ({"features": ["heart_dx"]}, "features must be"),
    ({"arteries": ["LAD", "LAD"]}, "distinct names"),
    ({"arteries": ["LAD", "aorta"]}, "distinct names"),
    ({"coef": [[1.0]]}, "artery_model.coef: must be finite numbers of shape"),
    ({"intercept": [0.0, float("nan"), 0.0, 0.0]}, "artery_model.intercept"),
    ({"scale": [0.0] * 9}, "artery_model.scale: must be positive"),
    ({"mean": "x"}, "artery_model.mean: must hold numbers"),
    ({"fitted_on": [1]}, "fitted_on: must be an object"),
])
def test_damaged_models_are_refused(change, message):
    x, y = _positions(20, seed=3)
    values = {**fit_artery_model(x, y).to_dict(), **change}
    with pytest.raises(InputError, match=message):
        ArteryModel.from_dict(values)
    with pytest.raises(InputError, match="missing fields"):
        ArteryModel.from_dict({"features": list(ARTERY_FEATURES)})


def test_assignment_share_is_weighted_by_agatston_and_skips_non_coronary_lesions():
    records = [
        {"artery": "LAD", "reference_label": "LAD", "agatston": 30.0},
        {"artery": "LCX", "reference_label": "LAD", "agatston": 10.0},
        {"artery": "RCA", "reference_label": "RCA", "agatston": 60.0},
        {"artery": "unknown", "reference_label": "LM", "agatston": 5.0},
        {"artery": "LAD", "reference_label": "aortic", "agatston": 100.0},  # not coronary: left out
        {"artery": "LAD", "reference_label": "background", "agatston": 7.0},
        {"artery": "LAD", "agatston": 3.0},  # no reference
    ]
    out = artery_assignment(records)
    assert out["n_lesions"] == 4
    assert out["agatston_share_right"] == pytest.approx(90.0 / 105.0, abs=1e-6)
    assert out["lesion_share_right"] == 0.5
    assert out["per_artery"]["LAD"] == {"n_lesions": 2, "agatston": 40.0, "agatston_share_right": 0.75,
                                        "lesion_share_right": 0.5}
    assert out["per_artery"]["LCX"]["agatston_share_right"] is None
    assert out["confusion_agatston"]["LM"]["unknown"] == 5.0 and out["confusion_agatston"]["LAD"]["LCX"] == 10.0
    assert artery_assignment([])["agatston_share_right"] is None
