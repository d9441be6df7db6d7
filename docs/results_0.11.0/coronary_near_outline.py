"""Coronary Agatston of the 130 HU candidates within 10 mm of the body outline (rejected by the anatomy rule), per scan.

Usage: python docs/results_0.11.0/coronary_near_outline.py DATA_MANIFEST
"""

import sys

import numpy as np

from coronary_calcium.anatomy import ANATOMY_FEATURES, anatomy_features, find_anatomy
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import majority_label
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions

m = load_manifest(sys.argv[1])
i = ANATOMY_FEATURES.index("body_depth_mm")
tot = lost = 0
for scan in m.scans:
    vol, lab = read_scan(scan)
    flat = lab.reshape(-1)
    les = find_lesions(vol.hu, vol.spacing, config=ScoringConfig())
    af = anatomy_features(find_anatomy(vol.hu, vol.spacing), les, vol.spacing)
    labs = np.array([majority_label(flat[np.asarray(c.voxels)]) for c in les])
    ag = np.array([c.agatston for c in les])
    cor = (labs >= 1) & (labs <= 4)
    m_ = cor & (af[:, i] < 10)
    tot += ag[cor].sum()
    lost += ag[m_].sum()
    if m_.any():
        print(scan.patient_id, "coronary Ag near outline", round(ag[m_].sum()), "of", round(ag[cor].sum()), flush=True)
print("total", round(lost), "of", round(tot))
