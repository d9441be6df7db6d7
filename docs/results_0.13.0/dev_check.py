"""Development check on a labelled synthetic set: where the coronary Agatston is lost and what is kept wrongly.

    python docs/results_0.13.0/dev_check.py MANIFEST [--ckpt-dir DIR] [--save FILE.pkl]

Scores every scan of MANIFEST with the checkpoint's thresholds (default: the main job's), gives each candidate the
majority reference label of its voxels, and prints (1) the candidates' Agatston by truth (coronary, aortic / valve,
background) and by decision (kept, or the rule that rejected them), and (2) per patient figures: ICC(2,1) of the
Agatston totals, the share of patients in the right 5-class category, F1 over 2D candidates, calcium-free patients
scored 0, heavy (> 400) patients scored below half their truth, non-coronary candidates kept. Totals are sums of the
candidates' Agatston, so they differ slightly from `transfer`'s lesion-matched figures; use it on development data
only (see README.md).
"""

from __future__ import annotations

import argparse
import collections
import pickle

import numpy as np

from coronary_calcium.inference import infer_scan, load_model
from coronary_calcium.io.manifest import load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.labels import AORTIC, CORONARY_LABELS, VALVE, majority_label
from coronary_calcium.scoring.agatston import category_index
from coronary_calcium.scoring.agreement import icc_2_1


def candidate_rows(manifest: str, ckpt_dir: str) -> list[dict]:
    """One row per candidate of every scan: scan, truth label, kept, the rejecting rule, Agatston."""
    model = load_model(ckpt_dir, precision="fp32")
    rows = []
    for scan in load_manifest(manifest).scans:
        volume, labels = read_scan(scan)
        result = infer_scan(volume, model, keep_maps=False)
        flat = labels.ravel()
        for i, lesion in enumerate(result.candidates.lesions):
            truth = majority_label(flat[np.asarray(lesion.voxels)])
            kept = bool(result.decision.kept[i])
            rows.append({"scan": scan.scan_id, "truth": truth, "kept": kept, "agatston": float(lesion.agatston),
                         "reason": "kept" if kept else result.decision.reason(i)})
    model.close()
    return rows


def print_outcomes(rows: list[dict]) -> None:
    groups = {"coronary": CORONARY_LABELS, "aortic / valve": (AORTIC, VALVE), "background": (0,)}
    for name, labels in groups.items():
        table = collections.defaultdict(lambda: [0, 0.0])
        for r in rows:
            if r["truth"] in labels:
                table[r["reason"]][0] += 1
                table[r["reason"]][1] += r["agatston"]
        print(f"{name}:")
        for reason, (n, agatston) in sorted(table.items(), key=lambda kv: -kv[1][1]):
            print(f"  {n:6d} candidates {agatston:10.0f} Agatston  {reason}")


def patient_figures(rows: list[dict]) -> dict[str, float | str]:
    truth, pred = collections.defaultdict(float), collections.defaultdict(float)
    tp = fn = fp = 0
    for r in rows:
        coronary = r["truth"] in CORONARY_LABELS
        truth[r["scan"]] += r["agatston"] * coronary
        pred[r["scan"]] += r["agatston"] * r["kept"]
        tp, fn, fp = tp + (coronary and r["kept"]), fn + (coronary and not r["kept"]), fp + (r["kept"] and not coronary)
    scans = sorted(truth)
    t, p = np.array([truth[s] for s in scans]), np.array([pred[s] for s in scans])
    zero, heavy = t == 0, t > 400
    right_class = np.mean([category_index(a) == category_index(b) for a, b in zip(t, p)])
    return {"icc_2_1": round(float(icc_2_1(t, p)), 3), "right_category": round(float(right_class), 3),
            "candidate_f1": round(2 * tp / max(2 * tp + fn + fp, 1), 3),
            "calcium_free_scored_0": f"{int((p[zero] == 0).sum())} of {int(zero.sum())}",
            "heavy_below_half": f"{int((p[heavy] < t[heavy] / 2).sum())} of {int(heavy.sum())}",
            "non_coronary_kept": fp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--ckpt-dir", default="bundle/runs/inception_v3_scratch/models")
    parser.add_argument("--save", help="pickle the candidate rows here")
    args = parser.parse_args()
    rows = candidate_rows(args.manifest, args.ckpt_dir)
    if args.save:
        with open(args.save, "wb") as f:
            pickle.dump(rows, f)
    print_outcomes(rows)
    print(patient_figures(rows))


if __name__ == "__main__":
    main()
