"""Slice-classification metrics from labels and positive-class probabilities (numpy; no scikit-learn needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from coronary_calcium.errors import InputError

CLASS_NAMES = ("negative", "positive")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """2x2 counts, rows = truth (negative, positive), columns = prediction."""
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return cm


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and specificity of the positive class, ROC AUC, the confusion matrix and a
    per-class report (as scikit-learn's classification_report, in JSON form)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.ndim != 1:
        raise InputError("metrics", f"labels {labels.shape} and probabilities {probabilities.shape} must be 1D alike")
    if len(labels) == 0:
        raise InputError("metrics", "no slices to evaluate")
    predictions = (probabilities >= threshold).astype(np.int64)
    cm = confusion_matrix(labels, predictions)
    (tn, fp), (fn, tp) = cm
    report = {}
    for c, name in enumerate(CLASS_NAMES):
        tp_c = cm[c, c]
        prec = _safe_div(tp_c, cm[:, c].sum())
        rec = _safe_div(tp_c, cm[c, :].sum())
        report[name] = {
            "precision": prec,
            "recall": rec,
            "f1": _safe_div(2 * prec * rec, prec + rec),
            "support": int(cm[c, :].sum()),
        }
    precision, recall = report["positive"]["precision"], report["positive"]["recall"]
    return {
        "n": int(len(labels)),
        "threshold": float(threshold),
        "accuracy": _safe_div(tp + tn, len(labels)),
        "precision": precision,
        "recall": recall,
        "f1": report["positive"]["f1"],
        "specificity": _safe_div(tn, tn + fp),
        "roc_auc": roc_auc(labels, probabilities),
        "confusion_matrix": {"labels": list(CLASS_NAMES), "rows_truth_cols_prediction": cm.tolist()},
        "classification_report": report,
    }
