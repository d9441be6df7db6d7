"""Candidate patches with their truth and the shipped decision, for the patch-CNN experiment (see README.md).

    python extract.py MANIFEST SPLITS OUT.pkl [FIELD_MM]     (SPLITS: e.g. train,validation, or all; FIELD_MM: 40)

Every candidate the shipped model's lesion classifier judges (kept, or rejected by its probability; not those the
anatomy rule rejects first) gets a 3 x 64 x 64 HU patch centred on its centroid: a FIELD_MM square (40 mm: 0.625 mm
pixels), the candidate's slice and the slices about 3 mm above and below (at least one slice away).
"""
import pickle
import sys

import numpy as np
from scipy import ndimage

from coronary_calcium.inference import infer_scan, load_model
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import majority_label

SIZE, SLICE_STEP_MM = 64, 3.0


def patch(hu: np.ndarray, spacing, centroid, field_mm: float) -> np.ndarray:
    dz, ps = spacing[0], spacing[1]
    z, y, x = centroid
    step = max(1.0, SLICE_STEP_MM / dz)
    zs = [int(np.clip(np.rint(z + k * step), 0, hu.shape[0] - 1)) for k in (-1, 0, 1)]
    off = (np.arange(SIZE) - (SIZE - 1) / 2) * (field_mm / SIZE) / ps
    yy, xx = np.meshgrid(y + off, x + off, indexing="ij")
    return np.stack([ndimage.map_coordinates(hu[k], [yy, xx], order=1, cval=-1000.0) for k in zs]).astype(np.float16)


def main(manifest: str, splits: str, out: str, field_mm: str = "40",
         ckpt: str = "bundle/runs/inception_v3_scratch/models") -> None:
    model = load_model(ckpt, precision="fp32")
    wanted = splits.split(",")
    rows = []
    for scan in load_manifest(manifest).scans:
        if wanted != ["all"] and scan.split not in wanted:
            continue
        volume, labels = read_scan(scan)
        result = infer_scan(volume, model, keep_maps=False)
        d, flat = result.decision, labels.ravel()
        for i, les in enumerate(result.candidates.lesions):
            if not (d.kept[i] or d.reason(i).startswith(("component", "lesion"))):
                continue
            rows.append({"pid": scan.scan_id, "split": scan.split, "kept": bool(d.kept[i]),
                         "truth": majority_label(flat[np.asarray(les.voxels)]), "agatston": float(les.agatston),
                         "comp": float(d.component_probabilities[i]),
                         "patch": patch(volume.hu, volume.spacing, les.centroid_zyx, float(field_mm))})
        print(scan.scan_id, len(rows), flush=True)
    model.close()
    with open(out, "wb") as f:
        pickle.dump(rows, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
