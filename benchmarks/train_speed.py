"""Trainer throughput against a bare timm forward/backward loop, same model, batch and precision, one process.

    python benchmarks/train_speed.py [--quick] [--network inception_v3_scratch] [--precision bf16|fp32]
                                     [--device cpu|cuda]

The trainer is the bundle's own (train.json: CacheDataset, augmentation, SupervisedTrainer, handlers), fed
in-memory 512 x 512 HU slices; validation is switched off. The bare loop feeds random tensors of the size the
trainer's pipeline gives the network (train.json's image_size and HU windows). ``--device`` defaults to the GPU
when one is present; the precision to the device's default (bf16 where supported). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from host import cpu
from ignite.engine import Events
from monai.bundle import ConfigParser

from coronary_calcium.inference.calibration import training_defaults
from coronary_calcium.networks import create_network, trainable_parameters
from coronary_calcium.train.precision import PrecisionInferer, default_precision, prepare_network

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def _records(n: int, size: int = 512) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"image": rng.integers(-1000, 1500, (1, size, size), dtype=np.int16),
         "mask": np.zeros((1, size, size), np.uint8),
         "label": i % 2, "patient_id": "B", "scan_id": "B", "slice_index": i, "pixel_spacing": [0.5, 0.5],
         "original_size": [size, size]}
        for i in range(n)
    ]


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":  # CUDA runs asynchronously: wait for the work queued so far
        torch.cuda.synchronize(device)


def trainer_images_per_second(network: str, precision: str, batch: int, iters: int, warmup: int, out: Path,
                              device: str = "cpu") -> float:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({
        "bundle_root": str(BUNDLE), "output_dir": str(out), "network_name": network, "precision": precision,
        "device": f"$torch.device({device!r})",
        "batch_size": batch, "max_epochs": 1, "val_interval": 10**6, "resume": False,
        "train#records": _records(batch * (iters + warmup)), "validate#records": _records(2),
    })
    parser.parse()
    trainer = parser.get_parsed_content("train#trainer")
    stamps: list[float] = []

    def stamp(_engine) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    parser.get_parsed_content("tb_writer").close()
    timed = stamps[warmup:]
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def bare_images_per_second(network: str, precision: str, batch: int, iters: int, warmup: int,
                           device: str = "cpu") -> float:
    channels_last = True
    training = training_defaults()  # the bundle's input: one channel per HU window, train.json's image size
    model = prepare_network(create_network(network, in_channels=training["in_channels"]), device, channels_last)
    model.train()
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    inferer = PrecisionInferer(precision, channels_last)
    x = torch.rand(batch, training["in_channels"], *training["image_size"], device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(warmup + iters):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(inferer(x, model), y).backward()
        opt.step()
    _sync(device)
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few iterations (under a minute)")
    ap.add_argument("--network", default="inception_v3_scratch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None, help="bf16 / fp32 (default: the device's, see default_precision)")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    args.precision = args.precision or default_precision(args.device)
    iters, warmup = (4, 2) if args.quick else (12, 3)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # alternate to share the machine's noise between the two
        common = (args.network, args.precision, args.batch, iters, warmup)
        bare = [bare_images_per_second(*common, device=args.device)]
        trainer = [trainer_images_per_second(*common, Path(tmp) / "a", device=args.device)]
        if not args.quick:
            bare.append(bare_images_per_second(*common, device=args.device))
            trainer.append(trainer_images_per_second(*common, Path(tmp) / "b", device=args.device))
    result = {
        "benchmark": "train_speed", "network": args.network, "precision": args.precision, "batch": args.batch,
        "image_size": training_defaults()["image_size"],
        "channels_last": True, "iterations": iters, "torch_threads": torch.get_num_threads(),
        "trainer_img_per_s": round(max(trainer), 2), "bare_loop_img_per_s": round(max(bare), 2),
        "ratio": round(max(trainer) / max(bare), 3), "device": args.device,
        "gpu": torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else None,
        "cpu": cpu(),
    }
    print(f"trainer {result['trainer_img_per_s']} img/s, bare timm loop {result['bare_loop_img_per_s']} img/s, "
          f"ratio {result['ratio']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
