"""Per patient: the 130 HU candidates (no network), their reference label, Agatston and anatomy features.

Usage: python candidates.py DATA_MANIFEST train,validation OUT_DIR   (one pickle per patient)
"""

import pickle
import sys
from pathlib import Path

import numpy as np

from coronary_calcium.anatomy import anatomy_features, find_anatomy
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import majority_label
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions

man, splits, out = sys.argv[1], sys.argv[2].split(","), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
m = load_manifest(man)
cfg = ScoringConfig()
for split in splits:
    for scan in m.split(split):
        f = out / f"{scan.patient_id}.pkl"
        if f.exists():
            continue
        vol, lab = read_scan(scan)
        hu = vol.hu
        cands = find_lesions(hu, vol.spacing, config=cfg)
        flat = lab.reshape(-1)
        labs = np.array([majority_label(flat[np.asarray(c.voxels)]) for c in cands])
        an = find_anatomy(hu, vol.spacing)
        af = anatomy_features(an, cands, vol.spacing)
        rec = dict(
            pid=scan.patient_id,
            split=split,
            spacing=vol.spacing,
            shape=hu.shape,
            centroid=np.array([c.centroid_zyx for c in cands]),
            area=np.array([c.total_area_mm2 for c in cands]),
            agatston=np.array([c.agatston for c in cands]),
            label=labs,
            anat=af,
            heart_centre_mm=an.heart_centre_mm,
            heart_radius_mm=an.heart_radius_mm,
        )
        pickle.dump(rec, open(f, "wb"))
        print(scan.patient_id, len(cands), np.bincount(labs, minlength=7), flush=True)
