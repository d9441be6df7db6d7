"""Ignite handlers the bundle wires in where MONAI has none: learning-rate logging, a fixed-name last checkpoint
with resume, and the evaluation report."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch

from coronary_calcium.errors import InputError
from coronary_calcium.report.classification import classification_metrics
from coronary_calcium.report.figures import plot_confusion_matrix, plot_curves
from coronary_calcium.report.files import atomic_path, write_csv, write_json
from coronary_calcium.report.tensorboard import read_scalars


class LearningRateLogger:
    """Writes the optimizer's learning rate (first parameter group) to TensorBoard at every epoch."""

    def __init__(self, summary_writer: Any, optimizer: torch.optim.Optimizer, tag: str = "learning_rate") -> None:
        self.writer = summary_writer
        self.optimizer = optimizer
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.writer.add_scalar(self.tag, self.optimizer.param_groups[0]["lr"], engine.state.epoch)


class LastCheckpoint:
    """Saves `save_dict` (objects with `state_dict`) and the trainer it is attached to (as "trainer") to one fixed
    file after every epoch, atomically, so an interrupted run resumes from it (`ResumeFromCheckpoint`)."""

    def __init__(self, path: str | Path, save_dict: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.save_dict = save_dict

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = {k: _unwrap(v).state_dict() for k, v in self.save_dict.items()}
        # plain ints only, so that `torch.load(weights_only=True)` reads the file back (no pickled objects)
        state["trainer"] = {k: int(v) for k, v in engine.state_dict().items() if isinstance(v, int)}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


def check_network_state(network: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise `InputError` when a saved network state does not fit `network` (another architecture)."""
    own = _unwrap(network).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong)):
            if keys:
                parts.append(f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})")
        raise InputError(source, "checkpoint does not fit this network (another architecture?): " + "; ".join(parts))


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """The state dict in a `LastCheckpoint` file, read with `weights_only=True`: tensors and plain containers only,
    so a crafted file cannot run code. Anything else (a pickled object, a truncated or foreign file) is refused."""
    advice = "delete it, or set resume=false to start afresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # what weights_only refuses: a global (class, function) to call
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        detail = found.group(1).strip() if found else type(e).__name__
        raise InputError(path, f"not a resume checkpoint that loads safely: it holds pickled Python objects, not "
                         f"only tensors and plain values ({detail}); {advice}") from None
    except Exception as e:  # EOFError / RuntimeError: truncated, or not a PyTorch file at all
        first = str(e).strip().split(". ")[0] or type(e).__name__
        raise InputError(path, f"not a resume checkpoint that loads safely: cannot be read ({first}); "
                         f"{advice}") from None
    if not isinstance(state, dict):
        raise InputError(path, f"not a resume checkpoint: holds a {type(state).__name__}, not a dict")
    return state


class ResumeFromCheckpoint:
    """At start, restores `load_dict` (network, optimizer, ...) and the trainer it is attached to from
    `LastCheckpoint`'s file when it exists, continuing the epoch count up to the configured `max_epochs`.
    The file is read when the handler is built, with `load_resume_state` (never unpickling objects), on CPU
    whatever device saved it."""

    def __init__(self, path: str | Path, load_dict: Mapping[str, Any], enabled: bool = True) -> None:
        self.path = Path(path)
        self.load_dict = load_dict
        self.enabled = enabled
        # read (and refused) when the bundle is built: before any other handler writes into the run folder
        self._state = load_resume_state(self.path) if enabled and self.path.is_file() else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled or self._state is None:
            return
        state, self._state = self._state, None
        if "network" in self.load_dict:
            network_state = state.get("network")
            check_network_state(self.load_dict["network"], network_state if isinstance(network_state, dict) else {},
                                self.path)
        max_epochs = engine.state.max_epochs
        for key in [*self.load_dict, "trainer"]:
            if key not in state:
                raise InputError(self.path, f"checkpoint has no {key!r} entry (has: {', '.join(map(str, state))})")
        saved = state["trainer"]
        if not isinstance(saved, dict) or not isinstance(saved.get("iteration"), int) or saved["iteration"] < 0:
            raise InputError(self.path, f"checkpoint's 'trainer' entry is not a training state: {saved!r:.80}")
        for key, obj in self.load_dict.items():
            try:
                _unwrap(obj).load_state_dict(state[key])
            except (KeyError, ValueError, TypeError, RuntimeError) as e:  # another optimizer / scheduler
                problem = f"checkpoint's {key!r} state does not fit ({type(e).__name__}: {e})"
                raise InputError(self.path, problem) from None
        # Ignite refuses to load a state whose max_epochs is below the current epoch; the configured value wins.
        engine.state.iteration = saved["iteration"]
        length = saved.get("epoch_length") if isinstance(saved.get("epoch_length"), int) else None
        engine.state.epoch = saved["iteration"] // max(1, length or engine.state.epoch_length or 1)
        engine.state.max_epochs = max_epochs
        engine.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch} of {max_epochs}")


class SlicePredictionWriter:
    """Collects each evaluated slice's positive-class probability with its label and identity; at completion writes
    the metrics (JSON), the per-slice predictions and the confusion matrix (CSV), the confusion matrix PNG and, when a
    TensorBoard log folder is given, the training / validation curves PNG."""

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float = 0.5,
        log_dir: str | Path | None = None,
        prefix: str = "test",
        title: str = "",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.prefix = prefix
        self.title = title
        self.rows: list[tuple[str, int, int, float]] = []
        self.metrics: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        # MONAI's engines decollate batch and output into lists of per-slice dicts by default
        samples = batch if isinstance(batch, list) else decollate_batch(batch)
        outputs = output if isinstance(output, list) else decollate_batch(output)
        for b, o in zip(samples, outputs):
            probability = float(torch.as_tensor(o["pred"]).float().view(-1)[1])  # softmaxed in postprocessing
            label = int(torch.as_tensor(b["label"]).view(-1)[0])
            self.rows.append((str(b["scan_id"]), int(b["slice_index"]), label, probability))

    def write(self, engine: Engine) -> None:
        labels = np.array([r[2] for r in self.rows])
        probs = np.array([r[3] for r in self.rows])
        self.metrics = classification_metrics(labels, probs, self.threshold)
        out = self.output_dir
        write_json(out / f"{self.prefix}_metrics.json", self.metrics)
        write_csv(out / f"{self.prefix}_predictions.csv", ["scan_id", "slice_index", "label", "probability"], self.rows)
        cm = np.array(self.metrics["confusion_matrix"]["rows_truth_cols_prediction"])
        write_csv(out / f"{self.prefix}_confusion_matrix.csv", ["truth", "pred_negative", "pred_positive"],
                  [["negative", *cm[0]], ["positive", *cm[1]]])
        plot_confusion_matrix(cm, out / f"{self.prefix}_confusion_matrix.png",
                              title=f"{self.title} {self.prefix}".strip())
        if self.log_dir is not None and self.log_dir.is_dir():
            scalars = read_scalars(self.log_dir)
            wanted = {k: v for k, v in scalars.items() if k in CURVE_TAGS}
            plot_curves(wanted, out / "training_curves.png", title=self.title or "Training")
        engine.logger.info(f"{self.prefix} metrics written to {out}")


CURVE_TAGS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
