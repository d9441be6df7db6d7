"""Per patient (training + validation): candidates, reference labels, Agatston, anatomy features, the heart region and
its block-mean HU (for heart_frame_cv.py), and the generator's true ventricles frame.

Usage: python heart_frame_extract.py DATA_MANIFEST train,validation OUT_DIR   (one pickle per patient)
"""
import json, pickle, sys
from pathlib import Path
import numpy as np
from coronary_calcium.anatomy import anatomy_features, find_anatomy
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import majority_label
from coronary_calcium.scoring.agatston import ScoringConfig, find_lesions
from coronary_calcium.synth import phantom as P
from coronary_calcium.synth.config import SynthConfig

man, splits, out = sys.argv[1], sys.argv[2].split(","), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
m = load_manifest(man)
gcfg = SynthConfig.from_dict(json.load(open(man))["generator"]["config"])
cfg = ScoringConfig()

def coarse_mean(hu, f):
    z, y, x = hu.shape
    py, px = (-y) % f, (-x) % f
    h = np.pad(hu.astype(np.float32), ((0, 0), (0, py), (0, px)), mode="edge")
    return h.reshape(z, h.shape[1] // f, f, h.shape[2] // f, f).mean(axis=(2, 4))

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
        fct = an.factor
        ch = coarse_mean(hu, fct)[:, : an.heart.shape[1], : an.heart.shape[2]]
        # oracle
        idx = int(scan.patient_id[3:])
        rng = np.random.default_rng([gcfg.seed, idx])
        g_an = P._draw_anatomy(rng, gcfg)
        grid, gated, tz = P._draw_grid(rng, gcfg, g_an)
        rec = dict(pid=scan.patient_id, split=split, spacing=vol.spacing, shape=hu.shape, factor=fct,
                   centroid=np.array([c.centroid_zyx for c in cands]).reshape(-1, 3),
                   agatston=np.array([c.agatston for c in cands]), label=labs, anat=af,
                   heart=an.heart.copy(), coarse_hu=ch.astype(np.float16), lungs=an.lungs.copy(),
                   heart_centre_mm=an.heart_centre_mm, heart_radius_mm=an.heart_radius_mm,
                   grid=(grid.x0, grid.y0, grid.z0, grid.ps, grid.dz),
                   v_centre=g_an.ventricles.centre, v_rot=g_an.ventricles.rot, v_semi=g_an.ventricles.semi,
                   root=g_an.root)
        pickle.dump(rec, open(f, "wb"))
        print(scan.patient_id, len(cands), flush=True)
