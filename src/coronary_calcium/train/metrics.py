"""Output transforms feeding the engines' (decollated) outputs to Ignite and MONAI metrics."""

from __future__ import annotations

from typing import Any

import torch
from monai.handlers import from_engine


def _stack(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pred, label = from_engine(["pred", "label"])(output)
    if isinstance(pred, (list, tuple)):
        pred, label = torch.stack([torch.as_tensor(p) for p in pred]), [torch.as_tensor(y) for y in label]
        label = torch.stack([y.to(pred.device) for y in label])
    pred = torch.as_tensor(pred).float()
    # decollating turns 0-d labels into Python numbers, which land on the CPU while pred is on the GPU
    return pred, torch.as_tensor(label).to(pred.device).view(-1).long()


def predicted_class(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class (B,), label (B,)) from logits or probabilities: Ignite's binary Accuracy/Precision/Recall."""
    pred, label = _stack(output)
    return pred.argmax(dim=1), label


def positive_probability(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive-class probability (B,), label (B,)) from softmaxed predictions: MONAI's ROCAUC."""
    pred, label = _stack(output)
    return pred[:, 1], label


def log_probability_and_label(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(log of the softmaxed predictions (B, 2), label (B,)) for Ignite's Loss metric with `NLLLoss`."""
    pred, label = _stack(output)
    return pred.clamp_min(1e-12).log(), label


def loss_value(output: Any) -> torch.Tensor:
    """The iteration's loss, from a trainer output that is decollated (a list of dicts) or not (one dict)."""
    return (output[0] if isinstance(output, list) else output)["loss"]
