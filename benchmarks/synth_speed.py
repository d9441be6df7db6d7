"""Speed of the synthetic CT generator: seconds per 512 x 512 x 48 volume and slices per second, one core.

    python benchmarks/synth_speed.py [--quick]

Generation (anatomy, calcium, noise, labels, truth scoring) and writing (DICOM series, NIfTI image and labels,
COCA XML, truth JSON) are timed separately. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import os

# One core: pin the thread pools before numpy / scipy load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from coronary_calcium.synth.config import SynthConfig  # noqa: E402
from coronary_calcium.synth.dataset import write_patient  # noqa: E402
from coronary_calcium.synth.phantom import generate_patient  # noqa: E402

SHAPE = (48, 512, 512)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 volumes instead of 6 (well under a minute)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = 2 if args.quick else 6
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        except OSError:
            pass
    config = SynthConfig(seed=args.seed, n_slices=(SHAPE[0], SHAPE[0]), matrix=SHAPE[1])
    generate_patient(config, n)  # warm-up: imports and first-call costs are not per-volume costs

    gen, write = [], []
    with tempfile.TemporaryDirectory(prefix="synth_speed_") as tmp:
        for i in range(n):
            t0 = time.perf_counter()
            p = generate_patient(config, i)
            t1 = time.perf_counter()
            write_patient(p, Path(tmp) / p.patient_id, config)
            t2 = time.perf_counter()
            assert p.volume.shape == SHAPE
            gen.append(t1 - t0)
            write.append(t2 - t1)
    g, w = statistics.mean(gen), statistics.mean(write)
    result = {
        "benchmark": "synth_speed",
        "shape_zyx": list(SHAPE),
        "volumes": n,
        "quick": args.quick,
        "threads": 1,
        "generate_s_per_volume": round(g, 4),
        "generate_s_max": round(max(gen), 4),
        "generate_slices_per_s": round(SHAPE[0] / g, 2),
        "write_s_per_volume": round(w, 4),
        "write_slices_per_s": round(SHAPE[0] / w, 2),
        "total_s_per_volume": round(g + w, 4),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(f"generate: {g:.3f} s per {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} volume (max {max(gen):.3f} s), "
          f"{SHAPE[0] / g:.1f} slices/s; {n} volumes, one core")
    print(f"write (DICOM + NIfTI image/labels + COCA XML + truth JSON): {w:.3f} s per volume, {SHAPE[0] / w:.1f} slices/s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
