"""Seconds per 512 x 512 x 48 scan end to end (read DICOM, classify, CAM, score, write), default network.

Usage: python benchmarks/inference_speed.py [--quick] [--threads N] [--network inception_v3_scratch]
                                            [--device cpu|cuda] [--precision bf16|fp32] [--profile N]

A synthetic chest-like volume (body, lungs, spine, calcium specks) is written as a DICOM series; the network has
random weights (timing only) and a temporary thresholds.json with a lesion classifier of the usual size (5 x 150
trees of 31 leaves, fitted on random features). As in any inference, the lesion features are computed and
classified only for the candidates the classifier judges (on positive slices, where the anatomy rule allows them:
here the calcium specks on the heart; the bone and noise specks are rejected by the rule first). Two cases bracket
real scans:
- "all positive": t_slice = 0, so every slice gets a CAM, candidate scores and a PNG overlay (the upper bound);
- "none positive": t_slice = 1, so (but for saturated probabilities) the run is read + classify + score + write
  (the lower bound).
Each is timed through `run_inference` (model loaded once, outside the timing; the first scan of a run, model load
included, is reported apart), and compared with a bare forward pass over the same preprocessed slices at the same
precision and the training's field of view (train.json: 160 mm on the heart). Stage timings (one pass each):
read, anatomy, preprocess, forward, CAM of every slice, lesion features of the judged candidates (and, for
comparison, of every candidate, as calibration computes them), the classifier, and the written outputs.
``--device`` defaults to the GPU when one is present (the network and its CAM run there; the rest stays on the CPU).
``--profile N`` adds one more all-positive run under cProfile and prints its N costliest functions (own time).
Prints a short table, then as the LAST line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from host import cpu

from coronary_calcium.anatomy import find_anatomy
from coronary_calcium.inference import infer_scan, load_model, run_inference
from coronary_calcium.inference.calibration import training_defaults
from coronary_calcium.inference.candidates import find_candidates
from coronary_calcium.inference.lesion_classifier import LesionClassifier, fit_lesion_classifier
from coronary_calcium.inference.lesion_features import LESION_FEATURES, lesion_features
from coronary_calcium.inference.outputs import write_scan_outputs
from coronary_calcium.inference.thresholds import Thresholds, file_sha256, save_thresholds
from coronary_calcium.io.dicom import read_dicom_series, write_dicom_series
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.networks import create_network

SHAPE = (48, 512, 512)
GOAL_S = 2.0  # issue 17: 2 s per 512 x 512 x 48 scan on 2 cores, end to end


def synthetic_volume(seed: int = 0) -> CTVolume:
    """48 x 512 x 512 at 0.49 mm x 3 mm: body, lungs, spine, sternum and a few calcium specks, noise 20 HU."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = SHAPE
    yy, xx = np.mgrid[:ny, :nx].astype(np.float32)
    body = ((yy - 256) / 200) ** 2 + ((xx - 256) / 240) ** 2 <= 1
    lungs = (((yy - 250) / 130) ** 2 + ((xx - 150) / 80) ** 2 <= 1) | (
        ((yy - 250) / 130) ** 2 + ((xx - 362) / 80) ** 2 <= 1)
    heart = ((yy - 230) / 90) ** 2 + ((xx - 270) / 100) ** 2 <= 1
    spine = ((yy - 400) / 35) ** 2 + ((xx - 256) / 35) ** 2 <= 1
    sternum = (np.abs(yy - 80) < 8) & (np.abs(xx - 256) < 25)
    base = np.full((ny, nx), -1000.0, np.float32)
    base[body] = 40.0
    base[body & ~heart & ~lungs] = -90.0  # fat
    base[heart] = 40.0
    base[lungs & ~heart] = -850.0
    base[spine | sternum] = 700.0
    hu = np.repeat(base[None], nz, axis=0) + rng.normal(0, 20, size=SHAPE).astype(np.float32)
    for _ in range(12):  # calcium specks on the heart surface
        k, r, c = int(rng.integers(10, 38)), int(rng.integers(160, 300)), int(rng.integers(190, 350))
        s = int(rng.integers(2, 6))
        hu[k, r : r + s, c : c + s] = float(rng.uniform(200, 900))
    return CTVolume(hu=np.rint(np.clip(hu, -1024, 3071)), spacing=(3.0, 0.488, 0.488), origin=(-125.0, -125.0, 0.0))


def _classifier() -> LesionClassifier:
    """A lesion classifier the size of a real one (timing only)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, len(LESION_FEATURES)))
    y = x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(size=x.shape[0]) > 2.0
    return fit_lesion_classifier(x, y, LESION_FEATURES, params={"early_stopping": False, "max_iter": 150})


def _thresholds(ckpt: Path, network: str, t_slice: float, layer: str, classifier: LesionClassifier) -> None:
    training = training_defaults()  # train.json's preprocessing
    save_thresholds(Thresholds(network_name=network, checkpoint=ckpt.name, checkpoint_sha256=file_sha256(ckpt),
                               t_slice=t_slice, t_cam=0.5, cam_layer=layer, image_size=tuple(training["image_size"]),
                               field_of_view_mm=training["field_of_view_mm"],
                               field_of_view_centre=training["field_of_view_centre"],
                               lesion_classifier=classifier, t_lesion=0.5,
                               validation={"note": "benchmark: random weights, thresholds set by hand"}),
                    ckpt.parent / "thresholds.json")


def _median_time(fn, reps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _print_profile(fn, n: int) -> None:
    """Run ``fn`` once under cProfile and print its ``n`` costliest functions by own time (tottime)."""
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, all-positive case only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--network", default="inception_v3_scratch")
    parser.add_argument("--precision", default=None, help="fp32 / bf16 (default: default_precision)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N costliest functions of one more all-positive run (cProfile, own time)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 1 if args.quick else 3
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="inference_speed_") as tmp:
        tmp = Path(tmp)
        series = tmp / "scan"
        write_dicom_series(synthetic_volume(), series, patient_id="BENCH")
        models = tmp / "models"
        models.mkdir()
        network = create_network(args.network, in_channels=training_defaults()["in_channels"])
        torch.save({"network": network.state_dict()}, models / "model.pt")
        layer = network.coronary_spec.cam_layers[0]

        classifier = _classifier()
        figures: dict[str, dict] = {}
        cases = [("all_positive", 0.0)] + ([] if args.quick else [("none_positive", 1.0)])
        model = None
        for name, t_slice in cases:
            _thresholds(models / "model.pt", args.network, t_slice, layer, classifier)
            t0 = time.perf_counter()
            model = load_model(models, device=args.device, precision=args.precision)
            out = tmp / f"out_{name}"
            run_inference(series, out, model=model, progress=False, overwrite=True)  # warm-up
            first_s = time.perf_counter() - t0
            seconds, all_times = _median_time(
                lambda: run_inference(series, out, model=model, progress=False, overwrite=True), reps)
            result = json.loads((out / "scan" / "result.json").read_text())
            figures[name] = {"seconds": seconds, "runs": [round(t, 3) for t in all_times],
                             "first_scan_with_model_load": round(first_s, 3),
                             "positive_slices": len(result["positive_slices"]), "n_candidates": result["n_candidates"],
                             "overlays": len(result["files"]["overlays"])}
            if args.profile and name == "all_positive":
                _print_profile(lambda: run_inference(series, out, model=model, progress=False, overwrite=True),
                               args.profile)
            if name != cases[-1][0]:
                model.close()
        assert model is not None

        # stage timings (one pass) and the bare forward pass over the same slices
        t0 = time.perf_counter()
        volume = read_dicom_series(series)
        read_s = time.perf_counter() - t0
        analyzer = model.analyzer
        t0 = time.perf_counter()
        centre = find_anatomy(volume.hu, volume.spacing).heart_centre_px
        anatomy_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        x = analyzer.preprocess(volume.hu, volume.spacing, centre)
        preprocess_s = time.perf_counter() - t0
        x_device = x.to(analyzer.device)

        def forward() -> None:
            with torch.inference_mode():
                for i in range(0, x.shape[0], analyzer.batch_size):
                    analyzer._inferer(x_device[i : i + analyzer.batch_size], analyzer.network)
            if analyzer.device.type == "cuda":
                torch.cuda.synchronize(analyzer.device)  # CUDA runs asynchronously

        forward()  # warm-up
        forward_s, _ = _median_time(forward, reps)
        t0 = time.perf_counter()
        analyzer.cam_maps(volume.hu, range(volume.shape[0]), x, volume.spacing, centre)
        cam_s = time.perf_counter() - t0
        config = model.thresholds.scoring_config()
        found = find_candidates(volume.hu, volume.spacing, analyzer, config, slice_thickness=volume.slice_thickness)
        # the candidates the all-positive case computes features for (the model holds the last case's thresholds)
        all_positive = dataclasses.replace(model, thresholds=dataclasses.replace(model.thresholds, t_slice=0.0))
        judged = infer_scan(volume, all_positive).candidates.computed
        anatomy = find_anatomy(volume.hu, volume.spacing)

        def features_of(rows) -> float:
            t0 = time.perf_counter()
            lesion_features(volume.hu, volume.spacing, [les for les, r in zip(found, rows) if r],
                            found.probabilities, found.cam_maps, found.cam_slices, config, anatomy=anatomy)
            return time.perf_counter() - t0

        features_s, features_all_s = features_of(judged), features_of(np.ones(len(found), dtype=bool))
        features = lesion_features(volume.hu, volume.spacing, found.lesions, found.probabilities, found.cam_maps,
                                   found.cam_slices, config, anatomy=anatomy)
        t0 = time.perf_counter()
        classifier.predict_proba(features[judged])
        classify_s = time.perf_counter() - t0
        result = infer_scan(volume, model)
        t0 = time.perf_counter()
        write_scan_outputs(result, volume, tmp / "outputs_stage")
        write_s = time.perf_counter() - t0
        accuracy = {}
        if not args.quick and analyzer.precision != "fp32":
            fp32 = load_model(models, device=args.device, precision="fp32")
            p32 = fp32.analyzer.probabilities(volume.hu, pixel_spacing=volume.spacing)
            plow = analyzer.probabilities(volume.hu, pixel_spacing=volume.spacing)
            with torch.inference_mode():  # random weights saturate the softmax: compare the logits as well
                l32 = fp32.analyzer._inferer(x_device, fp32.analyzer.network)  # the same preprocessed slices
                llow = analyzer._inferer(x_device, analyzer.network)
            accuracy = {"max_abs_probability_difference_vs_fp32": float(np.abs(p32 - plow).max()),
                        "max_logit_difference_vs_fp32_relative": float((l32 - llow).abs().max() / l32.abs().max())}
            fp32.close()
        model.close()

    e2e = figures["all_positive"]["seconds"]
    summary = {
        "benchmark": "inference_speed",
        "network": args.network,
        "shape_zyx": list(SHAPE),
        "image_size": list(model.thresholds.image_size),
        "field_of_view": [model.thresholds.field_of_view_mm, model.thresholds.field_of_view_centre],
        "precision": analyzer.precision,
        "channels_last": analyzer.channels_last,
        "threads": torch.get_num_threads(),
        "device": str(analyzer.device),
        "gpu": torch.cuda.get_device_name(analyzer.device) if analyzer.device.type == "cuda" else None,
        "cpu": cpu(),
        "cam_layer": layer,
        "seconds_per_scan": round(e2e, 3),
        "seconds_per_scan_none_positive": round(figures["none_positive"]["seconds"], 3) if "none_positive" in figures
        else None,
        "forward_seconds": round(forward_s, 3),
        "ratio_to_forward": round(e2e / forward_s, 2),
        "first_scan_seconds": figures["all_positive"]["first_scan_with_model_load"],
        "stages_seconds": {"read_dicom": round(read_s, 3), "anatomy": round(anatomy_s, 3),
                           "preprocess": round(preprocess_s, 3),
                           "forward": round(forward_s, 3), "cam_all_slices": round(cam_s, 3),
                           "lesion_features": round(features_s, 3), "lesion_classifier": round(classify_s, 3),
                           "write_outputs": round(write_s, 3)},
        "lesion_features_all_candidates_seconds": round(features_all_s, 3),
        "n_candidates": len(found),
        "n_candidates_judged": int(np.sum(judged)),
        "cases": figures,
        **accuracy,
        "goal_seconds": GOAL_S,
        "meets_goal": e2e <= GOAL_S,
        "quick": args.quick,
    }
    print(f"{'case':<16}{'s/scan':>8}{'positive':>10}{'overlays':>10}")
    for name, f in figures.items():
        print(f"{name:<16}{f['seconds']:>8.2f}{f['positive_slices']:>10}{f['overlays']:>10}")
    print(f"bare forward pass over {SHAPE[0]} slices: {forward_s:.2f} s; end to end / forward = "
          f"{summary['ratio_to_forward']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
