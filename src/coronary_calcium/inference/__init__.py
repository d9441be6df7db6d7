"""Inference: thresholds saved with a checkpoint, per-scan scoring, batch runs with reports, agreement.

Public API:
- `calibrate(manifest, output_dir, network_name, ...)` / `choose_thresholds(...)`: fit the lesion classifier on the
  training and validation splits, choose (t_slice, t_lesion) on out-of-fold validation probabilities and
  (t_slice, t_cam) on the validation split, write
  ``<ckpt_dir>/thresholds.json``;
- `load_thresholds(path, checkpoint)` / `save_thresholds(thresholds, path)`;
- `load_model(ckpt_dir)` -> `InferenceModel`; `infer_scan(volume, model)` -> `ScanResult`, one way:
  `find_candidates` (slice probabilities, CAMs, candidate lesions and their features: one `Candidates` record per
  scan) -> `decide` (the thresholds' keep / reject rule: a `Decision`) -> `score_lesions` (scoring/agatston.py:
  the kept candidates scored as found) -> `outputs.write_scan_outputs` (result.json, lesion mask, overlays);
- `run_inference(input_path, output_dir, ckpt_dir=...)` -> `RunResult`;
- `evaluate_agreement(results, manifest)` -> dict (agreement.json);
- `qrm_insert_scores(volume)`: Agatston of the QRM phantom's calcium inserts.
"""

from coronary_calcium.inference.agreement_report import Prediction, ScanReference, evaluate_agreement, scan_reference
from coronary_calcium.inference.batch import RunResult, discover_inputs, run_inference
from coronary_calcium.inference.calibration import calibrate, choose_thresholds, training_defaults
from coronary_calcium.inference.candidates import Candidates, find_candidates
from coronary_calcium.inference.decision import Decision, decide
from coronary_calcium.inference.model import InferenceModel, SliceAnalyzer, build_preprocessing, load_model
from coronary_calcium.inference.phantom import qrm_insert_scores
from coronary_calcium.inference.scan import ScanResult, infer_scan
from coronary_calcium.inference.thresholds import Thresholds, load_thresholds, save_thresholds

__all__ = [
    "Candidates",
    "Decision",
    "InferenceModel",
    "Prediction",
    "RunResult",
    "ScanReference",
    "ScanResult",
    "SliceAnalyzer",
    "Thresholds",
    "build_preprocessing",
    "calibrate",
    "choose_thresholds",
    "decide",
    "discover_inputs",
    "evaluate_agreement",
    "find_candidates",
    "infer_scan",
    "load_model",
    "load_thresholds",
    "qrm_insert_scores",
    "run_inference",
    "save_thresholds",
    "scan_reference",
    "training_defaults",
]
