"""Coronary candidates of some splits that the tissue rule (fat, aortic arc) rejects, with their features.

Usage: python coronary_rejections.py DATA_MANIFEST train,validation CKPT_DIR
"""
import sys

import numpy as np

from coronary_calcium.inference import infer_scan, load_model
from coronary_calcium.inference.decision import ARC_RULE_CODE, FAT_RULE_CODE, TISSUE_RULE_FEATURES
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import CORONARY_LABELS, majority_label

model = load_model(sys.argv[3], precision="fp32")
for scan in [s for s in load_manifest(sys.argv[1]).scans if s.split in sys.argv[2].split(",")]:
    volume, labels = read_scan(scan)
    result = infer_scan(volume, model, keep_maps=False)
    broken = result.decision.anatomy_broken
    for i in np.flatnonzero(np.isin(broken, (FAT_RULE_CODE, ARC_RULE_CODE))):
        label = majority_label(labels.reshape(-1)[np.asarray(result.candidates[i].voxels)])
        if label in CORONARY_LABELS:
            values = result.candidates.feature_columns(TISSUE_RULE_FEATURES)[i]
            print(scan.split, scan.scan_id, "label", label, "rule", int(broken[i]),
                  f"Agatston {result.candidates[i].agatston:.0f}",
                  dict(zip(TISSUE_RULE_FEATURES, np.round(values, 1).tolist())), flush=True)
