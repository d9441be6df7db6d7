"""find_anatomy with and without `_lung_cut_by_edge`, per scan: body, lung and heart-region blocks and the heart centre.

Usage: python docs/results_0.11.0/cut_lung_check.py DATA_MANIFEST N   (the first N scans; prints the ones that change)
"""

import sys

import numpy as np

import coronary_calcium.anatomy as A
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan

m = load_manifest(sys.argv[1])
n = int(sys.argv[2])
new_fn = A._lung_cut_by_edge
for scan in m.scans[:n]:
    vol, lab = read_scan(scan)
    A._lung_cut_by_edge = lambda c, f, b: np.zeros_like(b)
    a0 = A.find_anatomy(vol.hu, vol.spacing)
    A._lung_cut_by_edge = new_fn
    a1 = A.find_anatomy(vol.hu, vol.spacing)
    if a1.body.sum() != a0.body.sum():
        print(
            scan.patient_id,
            "body +%d blocks" % (a1.body.sum() - a0.body.sum()),
            "lungs %d -> %d" % (a0.lungs.sum(), a1.lungs.sum()),
            "heart %d -> %d" % (a0.heart.sum(), a1.heart.sum()),
            "centre shift mm",
            np.round(np.subtract(a1.heart_centre_mm, a0.heart_centre_mm), 1),
            flush=True,
        )
