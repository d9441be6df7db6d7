"""Slice-classification metrics from labels and positive-class probabilities (scikit-learn's metrics, JSON-ready)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics

from coronary_calcium.errors import InputError

CLASS_NAMES = ("negative", "positive")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (scikit-learn's roc_auc_score; ties count 1/2); None when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return float(metrics.roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """2x2 counts, rows = truth (negative, positive), columns = prediction."""
    return metrics.confusion_matrix(np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64),
                                    labels=[0, 1]).astype(np.int64)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and specificity of the positive class, ROC AUC, the confusion matrix and a
    per-class report (scikit-learn's classification_report, with "f1" for its "f1-score"; 0 where undefined)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.ndim != 1:
        raise InputError("metrics", f"labels {labels.shape} and probabilities {probabilities.shape} must be 1D alike")
    if len(labels) == 0:
        raise InputError("metrics", "no slices to evaluate")
    predictions = (probabilities >= threshold).astype(np.int64)
    cm = confusion_matrix(labels, predictions)
    sk = metrics.classification_report(labels, predictions, labels=[0, 1], target_names=list(CLASS_NAMES),
                                       output_dict=True, zero_division=0)
    report = {
        name: {"precision": float(sk[name]["precision"]), "recall": float(sk[name]["recall"]),
               "f1": float(sk[name]["f1-score"]), "support": int(sk[name]["support"])}
        for name in CLASS_NAMES
    }
    return {
        "n": int(len(labels)),
        "threshold": float(threshold),
        "accuracy": float(metrics.accuracy_score(labels, predictions)),
        "precision": report["positive"]["precision"],
        "recall": report["positive"]["recall"],
        "f1": report["positive"]["f1"],
        "specificity": report["negative"]["recall"],  # the negative class's recall
        "roc_auc": roc_auc(labels, probabilities),
        "confusion_matrix": {"labels": list(CLASS_NAMES), "rows_truth_cols_prediction": cm.tolist()},
        "classification_report": report,
    }
