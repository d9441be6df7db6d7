"""Every chain of discs per scan, with the generator's true aortic root (default or shifted family).

Usage: python chains.py syn|shf DATA_MANIFEST OUT.pkl
"""

import json
import pickle
import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from detect import find_root

from coronary_calcium.anatomy import find_anatomy
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.synth import phantom as P
from coronary_calcium.synth import shifted_anatomy as SA
from coronary_calcium.synth.config import SynthConfig

fam, man, out = sys.argv[1], sys.argv[2], sys.argv[3]
m = load_manifest(man)
md = json.load(open(man))
rows = []
for scan in m.scans:
    pid = scan.patient_id
    p = scan.image if scan.image.is_dir() else scan.image.parent
    p = p if (p / "truth.json").exists() else p.parent
    gen = json.load(open(p / "truth.json"))["generation"]
    vol, lab = read_scan(scan)
    if fam == "syn":
        cfg = SynthConfig.from_dict(md["generator"]["config"])
        rng = np.random.default_rng([cfg.seed, int(pid[3:])])
        an0 = P._draw_anatomy(rng, cfg)
        root, centre = an0.root, an0.ventricles.centre
    else:
        rng = np.random.default_rng([gen["seed"], 1_414, int(pid[3:])])
        an0 = SA.draw_anatomy(rng, 0.45)
        root, centre = an0.valve["root"], an0.heart["centre"]
    rs = root + np.array(gen["heart_centre_mm"]) - centre
    o, s = np.array(gen["origin_mm"]), np.array(gen["spacing_mm"])
    an = find_anatomy(vol.hu, vol.spacing)
    f = an.factor
    sp = an.spacing
    true = np.array([(rs[2] - o[2]) / s[0], (rs[1] - o[1]) / s[1] / f, (rs[0] - o[0]) / s[2] / f])
    info, mid = find_root(an, vol.hu)
    hc = np.array(an.heart_centre_mm) / np.array([sp[0], sp[1], sp[2]])
    rows.append(
        dict(
            pid=pid,
            gated=gen["gated"],
            nz=vol.hu.shape[0],
            sp=sp,
            true=true,
            mid=mid,
            hc=hc,
            R=an.heart_radius_mm,
            found=an.found,
            chains=info,
        )
    )
    print(pid, len(info), flush=True)
pickle.dump(rows, open(out, "wb"))
