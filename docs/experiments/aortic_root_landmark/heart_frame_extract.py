"""Adds to each pickle of candidates.py what heart_frame_cv.py needs: the heart region and its block-mean HU, and the
generator's grid and true ventricles frame.

Usage: python heart_frame_extract.py DATA_MANIFEST CANDIDATES_DIR   (run candidates.py into CANDIDATES_DIR first)
"""
import glob
import json
import pickle
import sys

import numpy as np

from coronary_calcium.anatomy import find_anatomy
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.synth import phantom as P
from coronary_calcium.synth.config import SynthConfig

man, folder = sys.argv[1], sys.argv[2]
scans = {s.patient_id: s for split in ("train", "validation", "test") for s in load_manifest(man).split(split)}
gcfg = SynthConfig.from_dict(json.load(open(man))["generator"]["config"])


def coarse_mean(hu, f):
    z, y, x = hu.shape
    h = np.pad(hu.astype(np.float32), ((0, 0), (0, (-y) % f), (0, (-x) % f)), mode="edge")
    return h.reshape(z, h.shape[1] // f, f, h.shape[2] // f, f).mean(axis=(2, 4))


for fn in sorted(glob.glob(folder + "/*.pkl")):
    rec = pickle.load(open(fn, "rb"))
    if "heart" in rec:
        continue
    vol, _ = read_scan(scans[rec["pid"]])
    an = find_anatomy(vol.hu, vol.spacing)
    rng = np.random.default_rng([gcfg.seed, int(rec["pid"][3:])])
    g_an = P._draw_anatomy(rng, gcfg)
    grid, _, _ = P._draw_grid(rng, gcfg, g_an)
    rec.update(factor=an.factor, heart=an.heart.copy(),
               coarse_hu=coarse_mean(vol.hu, an.factor)[:, : an.heart.shape[1], : an.heart.shape[2]].astype(np.float16),
               grid=(grid.x0, grid.y0, grid.z0, grid.ps, grid.dz),
               v_centre=g_an.ventricles.centre, v_rot=g_an.ventricles.rot, v_semi=g_an.ventricles.semi)
    pickle.dump(rec, open(fn, "wb"))
    print(rec["pid"], flush=True)
