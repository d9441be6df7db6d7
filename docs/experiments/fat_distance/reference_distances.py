"""fat_distance_mm of the reference candidates (coronary, aortic wall, valve / annulus) of some splits.

Usage: python reference_distances.py DATA_MANIFEST train,validation
"""
import collections
import sys

import numpy as np

from coronary_calcium.inference.lesion_features import LESION_FEATURES, lesion_features
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import majority_label
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions

config, column = ScoringConfig(), LESION_FEATURES.index("fat_distance_mm")
found = collections.defaultdict(list)
for scan in [s for s in load_manifest(sys.argv[1]).scans if s.split in sys.argv[2].split(",")]:
    volume, labels = read_scan(scan)
    candidates = find_lesions(volume.hu, volume.spacing, config=config)
    truth = np.array([majority_label(labels.reshape(-1)[np.asarray(c.voxels)]) for c in candidates])
    keep = np.flatnonzero(truth > 0)
    if keep.size == 0:
        continue
    candidates = [candidates[i] for i in keep]
    distance = lesion_features(volume.hu, volume.spacing, candidates, np.full(volume.shape[0], np.nan), None, [],
                               config)[:, column]
    for t, d, c in zip(truth[keep], distance, candidates):
        found["coronary" if t <= 4 else "aortic wall" if t == 5 else "valve / annulus"].append((d, c.agatston))
for group, rows in found.items():
    d, a = np.array(rows).T
    print(f"{group}: n {d.size}, median {np.median(d):.1f} mm, 90th percentile {np.percentile(d, 90):.1f} mm, "
          f"above 8 mm {int((d > 8).sum())} ({a[d > 8].sum():.0f} Agatston)")
