"""The seed paper's experiment in one command: its five configurations trained and evaluated by the bundle, one report.

:func:`run_experiment` runs every configuration of :func:`coronary_calcium.networks.paper_network_names` (Inception v3
fine-tuned / from scratch, Xception last layer / last four layers, VGG16 from scratch) through the bundle, each in its
own folder ``out_dir/<network>`` (``train.json`` and the network's overlay, then with ``evaluate.json``), and writes
``out_dir/report.md``, ``out_dir/report.html`` (self-contained) and ``out_dir/experiment.json`` (the same content as
data). The report is rewritten after every configuration, so a long run shows its progress and an interrupted one
keeps what it finished.

Rules:

* A fine-tuned configuration needs its ImageNet weights as a local file (``pretrained_weights={name: path}``); without
  one its row says "not run" with where to get the file. Nothing is downloaded and nothing trains from scratch under a
  fine-tuned name.
* A configuration that fails (bad weights file, out of memory, ...) is reported in its row with the reason (the full
  traceback goes to ``out_dir/<network>/error.log``); the others still run.
* ``out_dir/<network>`` resumes from its last checkpoint (the bundle's ``resume``), so rerunning an interrupted
  experiment continues it. A folder that holds a run with other settings is refused: use a new ``out_dir``.

Profiles (:data:`PROFILES`) set the bundle ids that differ from ``train.json``; ``overrides`` win over them:

* ``cpu``: the main job's pipeline and schedule (160 px on a 160 mm heart-centred field, 4 epochs, batch 16); VGG16
  2 epochs.
* ``gpu``: the paper's schedule: 15 epochs, 256 px, batch 32.
* ``test``: tiny, for tests: 80 px (Inception v3 needs >= 75), 1 epoch, batch 8, fp32.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coronary_calcium.errors import InputError, find_input_error
from coronary_calcium.report.files import write_json

__all__ = [
    "PAPER",
    "PAPER_RESULTS",
    "PROFILES",
    "Profile",
    "run_experiment",
    "machine_info",
    "parse_weights",
    "parse_networks",
    "add_experiment_arguments",
    "cmd_experiment",
]

PAPER = (
    "Srihari and Phatak, Detection and Localization of calcium deposits in coronary arteries from CT scans using "
    "Deep Learning models"
)

#: Only the numbers the paper states, on its own (real CT) data: its best configuration, Inception v3 trained from
#: scratch, reached 97 % accuracy and 0.96 precision. Every other cell of the paper's rows is "n/a".
PAPER_RESULTS: dict[str, dict[str, float]] = {"inception_v3_scratch": {"accuracy": 0.97, "precision": 0.96}}

#: Test-split metrics shown per model (keys of eval/test_metrics.json) and their column titles.
METRICS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1", "roc_auc": "ROC AUC"}


@dataclass(frozen=True)
class Profile:
    """Bundle overrides for one kind of machine: ``common`` for every network, ``per_network`` on top."""

    name: str
    description: str
    common: Mapping[str, Any]
    per_network: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def overrides(self, network: str) -> dict[str, Any]:
        """The profile's bundle overrides for ``network`` (common, then the network's own)."""
        return {**self.common, **self.per_network.get(network, {})}


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="cpu",
            description=(
                "All five configurations on a 2-core CPU with the main job's input pipeline and schedule (train.json: "
                "a 160 mm field of view on the heart at 160 px, two HU windows; 4 epochs, batch 16); VGG16, about five "
                "times Inception v3's cost per image, gets 2 epochs. Precision (bf16 autocast where the CPU has "
                "AMX / AVX512-BF16, else fp32), the class balance (oversampling, as the paper) and the learning rate "
                "are the bundle's defaults (train.json, then the network's overlay: VGG16 1e-4, the others 2e-3)."
            ),
            common={"batch_size": 16, "max_epochs": 4},
            per_network={"vgg16_scratch": {"max_epochs": 2}},
        ),
        Profile(
            name="gpu",
            description="The paper's schedule on a GPU: 15 epochs, 256 px, batch 32 (precision: the bundle's default).",
            common={"image_size": [256, 256], "batch_size": 32, "max_epochs": 15},
        ),
        Profile(
            name="test",
            description="Tiny, for tests only: 80 px (Inception v3 needs >= 75 px), 1 epoch, batch 8, fp32.",
            common={
                "image_size": [80, 80],
                "batch_size": 8,
                "max_epochs": 1,
                "precision": "fp32",
                "channels_last": False,
            },
        ),
    )
}

# Resolved bundle ids recorded per run (read back from the parser after training).
_RESOLVED_IDS = (
    "device",
    "precision",
    "channels_last",
    "image_size",
    "field_of_view_mm",
    "batch_size",
    "max_epochs",
    "learning_rate",
    "balance",
    "cam_layers",
    "cam_method",
)


def network_spec(name: str) -> Any:
    """:func:`coronary_calcium.networks.network_spec`, imported on first use (the CLI starts without torch/timm)."""
    from coronary_calcium.networks import network_spec as spec

    return spec(name)


def paper_network_names() -> tuple[str, ...]:
    """:func:`coronary_calcium.networks.paper_network_names`, imported on first use."""
    from coronary_calcium.networks import paper_network_names as names

    return names()


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[experiment] {message}", flush=True)


def get_profile(name: str) -> Profile:
    """The profile called ``name``; InputError listing the valid ones otherwise."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise InputError(name, f"unknown profile; valid: {', '.join(PROFILES)}") from None


def parse_networks(text: str | Sequence[str] | None) -> list[str]:
    """Network ids from ``"a,b"`` (or a list); None or empty = the paper's five. Unknown ids raise InputError."""
    if text is None:
        return list(paper_network_names())
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in items if n and n.strip()]
    if not names:
        return list(paper_network_names())
    for n in names:
        network_spec(n)  # InputError with the valid names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError("networks", f"listed more than once: {', '.join(dup)}")
    return names


def parse_weights(pairs: Sequence[str] | None) -> dict[str, str]:
    """``NAME=FILE`` strings (``--weights``) to ``{network: path}``."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, path = pair.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise InputError(pair, "give weights as NAME=FILE, e.g. xception_last=legacy_xception.safetensors")
        if name in out:
            raise InputError(name, "weights given more than once")
        out[name] = path
    return out


def _check_weights(weights: Mapping[str, str | os.PathLike] | None, names: Sequence[str]) -> dict[str, Path]:
    """``{network: file}`` for the networks to run. A key is a network id or a timm architecture (``inception_v3``,
    ``legacy_xception``): the latter gives the file to every fine-tuned configuration of that architecture."""
    pretrained = {n: network_spec(n) for n in paper_network_names() if network_spec(n).pretrained}
    archs = {spec.timm_name for spec in pretrained.values()}
    out: dict[str, Path] = {}
    by_arch: dict[str, Path] = {}
    for key, path in (weights or {}).items():
        if key not in archs:
            spec = network_spec(key)  # InputError listing the network ids
            if not spec.pretrained:
                raise InputError(key, "trains from scratch; it takes no ImageNet weights")
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise InputError(path, f"no such weights file (given for {key})")
        (by_arch if key in archs else out)[key] = path
    for name, spec in pretrained.items():
        if name not in out and spec.timm_name in by_arch:
            out[name] = by_arch[spec.timm_name]
    return {n: p for n, p in out.items() if n in names}


def machine_info() -> dict[str, Any]:
    """Platform, CPU, threads, GPU and library versions of this machine."""
    import monai
    import timm
    import torch

    from coronary_calcium.train.precision import bf16_supported

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu or "unknown",
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": bf16_supported("cpu"),
        "gpu": ", ".join(gpus) if gpus else "none",
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "timm": timm.__version__},
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _reason(exc: BaseException) -> str:
    """One line for a report: the InputError behind ``exc``, else its innermost cause (MONAI wraps errors)."""
    err = find_input_error(exc)
    if err is not None:
        return str(err)
    inner, seen = exc, set()
    while (inner.__cause__ or inner.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    text = f"{type(inner).__name__}: {inner}".strip()
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:600] + " ..."


def _shell(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def _value_text(value: Any) -> str:
    """A value as `--set key=VALUE` reads it (JSON)."""
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _fire_text(value: Any) -> str:
    """A value as MONAI's bundle CLI (python-fire: Python literals) reads it: True/False/None, not true/false/null."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _commands(name: str, bundle_overrides: Mapping[str, Any]) -> dict[str, str]:
    """Commands that redo one configuration by hand: the package CLI and MONAI's bundle CLI."""
    from coronary_calcium.train.bundle import training_configs

    sets = {k: v for k, v in bundle_overrides.items() if k not in ("network_name", "manifest")}
    manifest = bundle_overrides["manifest"]
    cli = ["--network", name, "--manifest", manifest]
    for k, v in sets.items():
        cli += ["--set", f"{k}={_value_text(v)}"]
    monai = ["--bundle_root", "bundle", "--network_name", name, "--manifest", manifest]
    for k, v in sets.items():
        monai += [f"--{k}", _fire_text(v)]

    def config_file(*extra: str) -> str:  # one shell word, readable: "['bundle/configs/train.json',...]"
        files = [f"bundle/configs/{c}.json" for c in training_configs(name, *extra)]
        return files[0] if len(files) == 1 else "\"[" + ",".join(f"'{f}'" for f in files) + "]\""

    monai_run = "python -m monai.bundle run --config_file "
    return {
        "train": _shell(["coronary-calcium", "train", *cli]),
        "evaluate": _shell(["coronary-calcium", "evaluate", *cli]),
        "monai_train": monai_run + config_file() + " " + _shell(monai),
        "monai_evaluate": monai_run + config_file("evaluate") + " " + _shell(monai),
    }


def _experiment_command(
    manifest: Path,
    out_dir: Path,
    profile: str,
    names: Sequence[str],
    weights: Mapping[str, Path],
    overrides: Mapping[str, Any],
) -> str:
    args = ["coronary-calcium", "experiment", "--manifest", str(manifest), "--out", str(out_dir), "--profile", profile]
    if list(names) != list(paper_network_names()):
        args += ["--networks", ",".join(names)]
    for n, p in weights.items():
        args += ["--weights", f"{n}={p}"]
    for k, v in overrides.items():
        args += ["--set", f"{k}={_value_text(v)}"]
    return _shell(args)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _collect_eval(run_dir: Path, split: str = "test") -> dict[str, Any]:
    ev = run_dir / "eval"
    files = {
        "training_curves": ev / "training_curves.png",
        "confusion_matrix": ev / f"{split}_confusion_matrix.png",
        "cam_montage": ev / "cam_montage.png",
        "metrics": ev / f"{split}_metrics.json",
        "localization": ev / "localization.json",
        "predictions": ev / f"{split}_predictions.csv",
    }
    return {
        "metrics": _read_json(files["metrics"]),
        "localization": _read_json(files["localization"]),
        "files": {k: str(p) for k, p in files.items() if p.is_file()},
    }


def _check_previous(run_dir: Path, settings: Mapping[str, Any]) -> None:
    marker = run_dir / "experiment_settings.json"
    if not marker.is_file():
        return
    before = _read_json(marker)
    if before != json.loads(json.dumps(settings, default=str)):
        raise InputError(
            run_dir,
            f"holds a run with other settings ({marker.name}: {before}); its checkpoints would be resumed with the "
            "new ones: give a new --out (or delete the folder)",
        )


def _run_one(name: str, bundle_overrides: dict[str, Any], weights: Path | None, progress: bool) -> dict[str, Any]:
    """Train and evaluate one configuration; a dict for the report (status ok / not run / failed)."""
    from coronary_calcium.train.bundle import run_bundle, training_configs

    spec = network_spec(name)
    run_dir = Path(bundle_overrides["output_dir"])
    row: dict[str, Any] = {
        "network": name,
        "description": spec.description,
        "pretrained": spec.pretrained,
        "trainable": spec.trainable,
        "output_dir": str(run_dir),
        "status": "not run",
        "reason": None,
        "settings": {k: v for k, v in bundle_overrides.items() if k not in ("manifest", "output_dir")},
        "resolved": {},
        "seconds": {},
        "commands": _commands(name, bundle_overrides),
        "metrics": None,
        "localization": None,
        "files": {},
    }
    if spec.pretrained and weights is None:
        row["commands"] = {}  # they would need the weights file: see the experiment command
        row["reason"] = (
            "not run: ImageNet weights not available offline (give --weights "
            f"{name}=FILE; see {spec.weights_hint or 'the network registry'})"
        )
        _log(progress, f"{name}: {row['reason']}")
        return row
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "experiment_settings.json", {k: v for k, v in bundle_overrides.items()})
    stage = "training"
    try:
        t0 = time.perf_counter()
        _log(progress, f"{name}: training ({_value_text(bundle_overrides.get('max_epochs'))} epoch(s))")
        parser = run_bundle(training_configs(name), bundle_overrides)
        row["seconds"]["train"] = round(time.perf_counter() - t0, 1)
        row["resolved"] = _resolved(parser)
        stage = "evaluation"
        t0 = time.perf_counter()
        _log(progress, f"{name}: evaluating on the test split")
        run_bundle(training_configs(name, "evaluate"), bundle_overrides)
        row["seconds"]["evaluate"] = round(time.perf_counter() - t0, 1)
    except Exception as exc:  # noqa: BLE001 - one configuration's failure is reported, the others still run
        row["status"] = "failed"
        row["reason"] = f"failed during {stage}: {_reason(exc)}"
        (run_dir / "error.log").write_text("".join(traceback.format_exception(exc)))
        _log(progress, f"{name}: {row['reason']}")
        row.update(_collect_eval(run_dir) if stage == "evaluation" else {})
        return row
    row.update(_collect_eval(run_dir))
    if row["metrics"] is None:
        row["status"] = "failed"
        row["reason"] = "failed: the evaluation wrote no eval/test_metrics.json"
    else:
        row["status"] = "ok"
    _log(progress, f"{name}: done in {sum(row['seconds'].values()):.0f} s")
    return row


def _resolved(parser: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _RESOLVED_IDS:
        try:
            value = parser.get_parsed_content(key)
        except Exception:  # noqa: BLE001 - a missing id only leaves a gap in the report
            continue
        out[key] = str(value) if key == "device" else (list(value) if isinstance(value, tuple) else value)
    try:
        trainer = parser.get_parsed_content("train#trainer")
        out["epochs_trained"] = int(trainer.state.epoch)
        out["iterations_per_epoch"] = int(trainer.state.epoch_length or 0)
        out["train_slices"] = len(parser.get_parsed_content("train#records"))
        out["train_samples_per_epoch"] = len(parser.get_parsed_content("train#dataset"))
        out["validation_slices"] = len(parser.get_parsed_content("validate#records"))
    except Exception as exc:  # noqa: BLE001 - the report says what it could not read rather than failing the run
        out["training_state_unavailable"] = f"{type(exc).__name__}: {exc}"
    return out


def run_experiment(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    profile: str = "cpu",
    networks: Sequence[str] | None = None,
    pretrained_weights: Mapping[str, str | os.PathLike] | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Train and evaluate the paper's configurations on ``manifest``; write the report; return ``out_dir/report.md``.

    Args:
        manifest: the data manifest (train / validation / test splits; metrics are on the test split).
        out_dir: the experiment folder: ``<network>/`` per configuration, ``report.md``, ``report.html``,
            ``experiment.json``.
        profile: a key of :data:`PROFILES` ("cpu", "gpu", "test").
        networks: network ids to run, in this order (default: the paper's five).
        pretrained_weights: ``{network: local ImageNet weights file}`` for the fine-tuned configurations (a key may
            also be a timm architecture, ``inception_v3`` or ``legacy_xception``, for all its fine-tuned
            configurations); one without a file is reported as not run.
        overrides: bundle config overrides for every configuration, on top of the profile (e.g. ``slice_cache_dir``).
        progress: print one line per step.

    Bad arguments (unknown network or profile, weights for a from-scratch network, a missing weights file, a manifest
    that does not validate, a folder of a run with other settings) raise InputError before anything trains.
    """
    prof = get_profile(profile)
    names = parse_networks(networks)
    weights = _check_weights(pretrained_weights, names)
    manifest, parsed = _validated_manifest(manifest)
    out_dir = Path(out_dir).expanduser().resolve()
    extra = _checked_overrides(overrides)
    plans = _plan_runs(names, prof, manifest, out_dir, weights, extra)
    summary = _new_summary(prof, names, manifest, parsed, out_dir, weights, extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    _run_plans(plans, summary, out_dir, prof.name, weights, progress)
    report = out_dir / "report.md"
    _log(progress, f"wrote {report} and {out_dir / 'report.html'}")
    return report


def _validated_manifest(manifest: str | os.PathLike) -> tuple[Path, Any]:
    """The manifest's resolved path and its parsed form; InputError when it does not validate."""
    from coronary_calcium.io.manifest import validate_manifest

    manifest = Path(manifest).expanduser().resolve()
    parsed, problems = validate_manifest(manifest)
    if problems:
        raise InputError(manifest, f"does not validate ({len(problems)} problem(s)): {problems[0]}")
    return manifest, parsed


def _checked_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's bundle overrides; InputError for a key the experiment sets per configuration."""
    extra = dict(overrides or {})
    for key in ("network_name", "output_dir", "manifest", "pretrained_weights"):
        if key in extra:
            raise InputError(key, "is set by the experiment per configuration; it cannot be overridden")
    return extra


def _plan_runs(names: list[str], prof: Profile, manifest: Path, out_dir: Path, weights: Mapping[str, Path],
               extra: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each configuration's bundle overrides, checked against what an earlier run left in its folder."""
    plans: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        ov: dict[str, Any] = {
            "manifest": str(manifest),
            "network_name": name,
            **prof.overrides(name),
            **extra,
            "output_dir": str(out_dir / name),
        }
        if name in weights:
            ov["pretrained_weights"] = str(weights[name])
        _check_previous(out_dir / name, ov)
        plans.append((name, ov))
    return plans


def _new_summary(prof: Profile, names: list[str], manifest: Path, parsed: Any, out_dir: Path,
                 weights: Mapping[str, Path], extra: dict[str, Any]) -> dict[str, Any]:
    """The experiment's summary before any configuration has run (the report is rendered from it)."""
    desc = getattr(parsed, "description", None) or ""
    return {
        "title": "Coronary artery calcium slice classification: the paper's configurations",
        "paper": {"citation": PAPER, "results": PAPER_RESULTS},
        "started": _now(),
        "finished": None,
        "profile": {
            "name": prof.name,
            "description": prof.description,
            "settings": {n: prof.overrides(n) for n in names},
            "overrides": extra,
        },
        "manifest": {"path": str(manifest), "name": getattr(parsed, "name", None), "description": desc},
        "out_dir": str(out_dir),
        "machine": machine_info(),
        "command": _experiment_command(manifest, out_dir, prof.name, names, weights, extra),
        "networks": names,
        "runs": [],
    }


def _run_plans(plans: list[tuple[str, dict[str, Any]]], summary: dict[str, Any], out_dir: Path, profile_name: str,
               weights: Mapping[str, Path], progress: bool) -> None:
    """Run each configuration in turn, rewriting the report after each one and once more at the end, even on error."""
    from coronary_calcium.report.experiment_report import write_experiment_report

    names = summary["networks"]
    t_start = time.perf_counter()
    try:
        for i, (name, ov) in enumerate(plans, 1):
            _log(progress, f"[{i}/{len(plans)}] {name} (profile {profile_name})")
            summary["runs"].append(_run_one(name, ov, weights.get(name), progress))
            summary["seconds"] = round(time.perf_counter() - t_start, 1)
            summary["pending"] = names[i:]
            write_experiment_report(summary, out_dir)
    finally:
        summary["finished"] = _now()
        summary["seconds"] = round(time.perf_counter() - t_start, 1)
        summary["pending"] = [n for n in names if n not in {r["network"] for r in summary["runs"]}]
        write_experiment_report(summary, out_dir)


# --------------------------------------------------------------------------------------------------
# Command line (wired into `coronary-calcium experiment` by cli.py)


def add_experiment_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``coronary-calcium experiment``."""
    p.add_argument("--manifest", type=Path, required=True, help="data manifest (metrics are on its test split)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="experiment folder (report.md, report.html, one folder per "
        "network; an interrupted experiment resumes in the same folder)",
    )
    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="cpu",
        help="cpu: the main job's pipeline, 4 epochs (VGG16 2); gpu: the paper's 15 epochs, 256 px; test: tiny",
    )
    p.add_argument(
        "--networks",
        help="comma-separated subset, run in this order (default: the paper's five: inception_v3_last, "
        "inception_v3_scratch, xception_last, xception_last4, vgg16_scratch)",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="local ImageNet weights of a fine-tuned configuration (e.g. xception_last=FILE) or of an architecture "
        "for all its fine-tuned configurations (inception_v3=FILE, legacy_xception=FILE); repeatable; a fine-tuned "
        "configuration without weights is reported as not run",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle override for every configuration, on top of the profile (e.g. num_workers=2)",
    )


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run ``coronary-calcium experiment``; 0 when every configuration that could run ran, 1 when one failed."""
    from coronary_calcium.train.bundle import parse_overrides

    weights = parse_weights(args.weights)
    report = run_experiment(
        args.manifest,
        args.out,
        profile=args.profile,
        networks=parse_networks(args.networks),
        pretrained_weights=weights,
        overrides=parse_overrides(getattr(args, "set", []) or []),
    )
    summary = json.loads((report.parent / "experiment.json").read_text())
    for r in summary["runs"]:
        m = r.get("metrics") or {}
        line = f"{r['network']}: {r['status']}"
        if r["status"] == "ok":
            line += "  " + "  ".join(f"{k} {m[k]:.4f}" for k in METRICS if isinstance(m.get(k), (int, float)))
        elif r.get("reason"):
            line += f" ({r['reason']})"
        print(line)
    print(f"report: {report}\nreport (HTML): {report.with_suffix('.html')}")
    return 1 if any(r["status"] == "failed" for r in summary["runs"]) else 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - `python -m coronary_calcium.experiment`
    parser = argparse.ArgumentParser(prog="coronary-calcium experiment", description=__doc__.split("\n")[0])
    add_experiment_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_experiment(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
