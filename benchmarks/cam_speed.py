"""Seconds per slice of a plain forward pass vs Grad-CAM at two layers, timm inception_v3 at 256 x 256.

Usage: python benchmarks/cam_speed.py [--quick] [--threads N] [--batch B] [--method gradcam]
Prints a short table, then as the LAST line one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import timm
import torch

from coronary_calcium.explain.cam import CAM

LAYERS = ["Mixed_6e", "Mixed_7c"]


def _time(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)  # median: the machine is shared and noisy


def _measure(model: torch.nn.Module, x: torch.Tensor, method: str, bf16: bool, reps: int, warmup: int) -> dict:
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.no_grad(), ctx():
            model(x)

    cam = CAM(model, LAYERS, method)

    def explain() -> dict:
        with ctx():
            res = cam(x, 1)
        assert all(torch.isfinite(r.raw).all() for r in res.values())
        return res

    try:
        fwd = _time(forward, reps, warmup)
        cam_t = _time(explain, reps, warmup)
        maps = {k: r.upsampled for k, r in explain().items()}
    finally:
        cam.remove()
        model.to(memory_format=torch.contiguous_format)
    n = x.shape[0]
    return {"forward_s_per_slice": fwd / n, "cam_s_per_slice": cam_t / n, "ratio": cam_t / fwd, "maps": maps}


def _agreement(a: dict, b: dict) -> dict:
    """Per layer: mean Pearson correlation of per-slice maps, a bf16 vs fp32 sanity check."""
    out = {}
    for layer in a:
        fa, fb = a[layer].flatten(1), b[layer].flatten(1)
        fa, fb = fa - fa.mean(1, keepdim=True), fb - fb.mean(1, keepdim=True)
        r = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
        out[layer] = round(float(r.mean()), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--method", default="gradcam")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reps, warmup = (3, 1) if args.quick else (9, 2)
    model = timm.create_model("inception_v3", num_classes=2, in_chans=1, pretrained=False).eval()
    x = torch.randn(args.batch, 1, args.size, args.size)

    rows = {"fp32": _measure(model, x, args.method, False, reps, warmup)}
    try:
        rows["bf16_autocast_channels_last"] = _measure(model, x, args.method, True, reps, warmup)
    except Exception as exc:  # report instead of failing: bf16 support depends on the CPU
        print(f"bf16 autocast + channels_last failed: {exc!r}")
    maps = {k: r.pop("maps") for k, r in rows.items()}
    agreement = _agreement(maps["fp32"], maps[k]) if (k := "bf16_autocast_channels_last") in maps else None

    print(f"inception_v3 {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{args.method} at {'+'.join(LAYERS)}, median of {reps}")
    print(f"{'precision':<30}{'forward s/slice':>17}{'cam s/slice':>14}{'ratio':>8}")
    for name, r in rows.items():
        print(f"{name:<30}{r['forward_s_per_slice']:>17.4f}{r['cam_s_per_slice']:>14.4f}{r['ratio']:>8.2f}")
    if agreement is not None:
        print(f"bf16 vs fp32 CAM map correlation (random weights): {agreement}")
    summary = {
        "model": "inception_v3",
        "input": [args.batch, 1, args.size, args.size],
        "method": args.method,
        "layers": LAYERS,
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        **{k: round(v, 5) for k, v in rows["fp32"].items()},
        "precision": "fp32",
        "by_precision": {k: {kk: round(vv, 5) for kk, vv in r.items()} for k, r in rows.items()},
        "bf16_vs_fp32_map_corr": agreement,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
