"""What the CAM panel handler adds to a validation epoch: the bundle's evaluator with and without it.

    python benchmarks/cam_handler_overhead.py [--quick] [--slices 450] [--network inception_v3_scratch]

Both evaluators come from ``bundle/configs/train.json`` (``validate#evaluator``: cached preprocessing, the default
precision, metrics, stats, TensorBoard and checkpoint handlers) over the same in-memory 512 x 512 HU slices; one
also has the default ``CAMPanelHandler`` (the configured panel of positives and negatives, every CAM layer of the
network). Runs alternate so both share the machine's noise; the fastest of each is kept. The default slice count
is the default synthetic set's validation split. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from coronary_calcium.explain.handlers import CAMPanelHandler

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def _records(n: int, size: int = 512) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = rng.normal(40, 20, (1, size, size)).astype(np.int16)
        mask = np.zeros((1, size, size), np.uint8)
        if i % 5 == 0:  # a deposit on every fifth slice, so the panel has positives with masks
            image[0, 250:254, 300:304] = 400
            mask[0, 250:254, 300:304] = 1
        out.append({"image": image, "mask": mask, "label": int(i % 5 == 0), "patient_id": "B", "scan_id": "B",
                    "slice_index": i, "pixel_spacing": [0.5, 0.5], "original_size": [size, size]})
    return out


def _evaluator(network: str, records: list[dict], out: Path, with_cam: bool):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "output_dir": str(out), "network_name": network,
                   "validate#records": records, "train#records": records[:2]})
    handlers = parser["validate#handlers"]
    is_cam = [str(h.get("_target_", "")).endswith(CAMPanelHandler.__name__) for h in handlers]
    if not with_cam:
        parser["validate#handlers"] = [h for h, c in zip(handlers, is_cam) if not c]
    parser.parse()
    evaluator = parser.get_parsed_content("validate#evaluator")
    panel = parser.get_parsed_content("cam_panel_positives") + parser.get_parsed_content("cam_panel_negatives")
    return evaluator, parser.get_parsed_content("tb_writer"), panel, any(is_cam)


def _timed_run(evaluator) -> float:
    start = time.perf_counter()
    evaluator.run()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="96 slices, one run each (under a minute)")
    ap.add_argument("--slices", type=int, default=450, help="validation slices (default: the default validation split)")
    ap.add_argument("--network", default="inception_v3_scratch")
    args = ap.parse_args()
    n, reps = (96, 1) if args.quick else (args.slices, 2)
    records = _records(n)
    with tempfile.TemporaryDirectory() as tmp:
        plain, w1, _, _ = _evaluator(args.network, records, Path(tmp) / "plain", with_cam=False)
        cam, w2, panel, attached = _evaluator(args.network, records, Path(tmp) / "cam", with_cam=True)
        if not attached:
            raise SystemExit("the bundle's validation evaluator has no CAMPanelHandler")
        _timed_run(plain)  # warm-up: caches, allocator, first CAM hooks
        _timed_run(cam)
        t_plain, t_cam = [], []
        for _ in range(reps):
            t_plain.append(_timed_run(plain))
            t_cam.append(_timed_run(cam))
        w1.close()
        w2.close()
    added = min(t_cam) - min(t_plain)
    result = {
        "benchmark": "cam_handler_overhead", "network": args.network, "validation_slices": n, "panel_slices": panel,
        "epoch_s_without_cam": round(min(t_plain), 2), "epoch_s_with_cam": round(min(t_cam), 2),
        "added_s": round(added, 2), "added_fraction": round(added / min(t_plain), 3),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
    }
    print(f"validation epoch ({n} slices): {result['epoch_s_without_cam']} s without the CAM panel, "
          f"{result['epoch_s_with_cam']} s with it ({panel} slices): +{100 * result['added_fraction']:.1f} %")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
