"""The main job, stage by stage: wall time of synth, train, evaluate (with calibration) and infer, and the model's
test figures, on this machine.

    python benchmarks/main_job.py [--quick] [--network ID] [--epochs N] [--fresh-data]

Runs the commands of `scripts/main.sh` (through this Python's `coronary_calcium.cli`) one after another in the
repository, timing each, then reads what they wrote: the slice classifier's test metrics (`eval/test_metrics.json`)
and the lesion-level agreement on the test split (`inference/agreement.json`). It trains from scratch: an earlier
run of the same network is moved aside to `bundle/runs/<network>.before-main-job-<time>` first. The synthetic data
set is made only when missing unless `--fresh-data`. `--quick`: one epoch (the timings are then no main-job figure).
The CPU (model name, AVX2 / AVX512 / AMX flags) is part of the result. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from host import cpu

REPO = Path(__file__).resolve().parents[1]
GOAL_MINUTES, GOAL_ACCURACY, GOAL_PRECISION = 20.0, 0.97, 0.95


def _stage(name: str, args: list[str], log) -> float:
    """Run one `coronary-calcium` command; its seconds. A failing stage ends the benchmark with its output's tail."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "coronary_calcium.cli", *args]
    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        log.flush()
        tail = Path(log.name).read_text(errors="replace")[-3000:]
        raise SystemExit(f"error: stage {name} ({' '.join(args)}) exited with {proc.returncode}:\n{tail}")
    print(f"{name}: {seconds:.0f} s", flush=True)
    return seconds


def _figures(run: Path) -> dict:
    """The test figures the stages wrote."""
    slices = json.loads((run / "eval" / "test_metrics.json").read_text())
    agreement = json.loads((run / "inference" / "agreement.json").read_text())
    scores, lesions = agreement["scores"], agreement["lesions"]
    return {
        "slice_accuracy": slices["accuracy"], "slice_precision": slices["precision"],
        "slice_recall": slices["recall"], "slice_roc_auc": slices["roc_auc"],
        "icc_2_1": scores["icc_2_1"], "kappa_5class": scores["kappa"]["5-class"]["kappa_linear"],
        "lesion_f1": lesions["f1"],
        "artery_agatston_share_right": agreement.get("artery_assignment", {}).get("agatston_share_right"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch: checks the path, not a main-job figure")
    parser.add_argument("--network", default="inception_v3_scratch")
    parser.add_argument("--epochs", type=int, default=None, help="default: the bundle's (4); --quick: 1")
    parser.add_argument("--fresh-data", action="store_true", help="regenerate the synthetic set even when present")
    args = parser.parse_args(argv)
    epochs = 1 if args.quick and args.epochs is None else args.epochs
    run = REPO / "bundle" / "runs" / args.network
    if run.exists():
        aside = run.with_name(f"{run.name}.before-main-job-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(run), str(aside))
        print(f"moved the earlier run aside: {aside}", flush=True)
    extra = ["--epochs", str(epochs)] if epochs is not None else []
    synth = ["synth", "--manifest", "data_manifest.json"] + (["--overwrite"] if args.fresh_data else [])
    stages = [("synth", synth), ("train", ["train", "--network", args.network, *extra]),
              ("evaluate", ["evaluate", "--network", args.network, *extra]),
              ("infer", ["infer", "data_manifest.json", "--split", "test", "--network", args.network,
                         "--out", str(run / "inference"), "--overwrite"])]
    seconds = {}
    run.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no bundle/runs yet
    with open(run.parent / f"main_job_{args.network}.log", "w") as log:
        for name, stage_args in stages:
            seconds[name] = round(_stage(name, stage_args, log), 1)
    total_min = sum(seconds.values()) / 60.0
    figures = _figures(run)
    result = {
        "benchmark": "main_job", "network": args.network, "epochs": epochs or "bundle default", "quick": args.quick,
        "fresh_data": args.fresh_data, "cpu": cpu(), "stages_seconds": seconds, "total_minutes": round(total_min, 2),
        **figures, "goal_minutes": GOAL_MINUTES, "goal_slice_accuracy": GOAL_ACCURACY,
        "goal_slice_precision": GOAL_PRECISION,
        "meets_goal": total_min <= GOAL_MINUTES and figures["slice_accuracy"] >= GOAL_ACCURACY
        and figures["slice_precision"] >= GOAL_PRECISION,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
