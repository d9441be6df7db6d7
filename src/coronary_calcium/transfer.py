"""Cross-generator transfer report: score another synthetic family with a trained model and report agreement.

`transfer_report(ckpt_dir, manifest, out_dir)` runs inference (`run_inference`) with the checkpoint folder's
model and thresholds on the manifest's scans (all splits, or one), computes agreement with the references
(`evaluate_agreement`) and writes ``transfer.json`` and ``transfer.md`` into ``out_dir`` with the figures of
issue 14's "Done when": ICC(2,1), 5-class linearly weighted kappa and lesion F1 with their 95 % intervals, the share
of calcium-free patients scored 0, the heavy-burden (> 400 Agatston) patients scored below half their truth, the
per-artery agreement when the references have arteries, and a per-patient table.

The family under test is evaluated, never tuned on: nothing here changes the model or its thresholds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from coronary_calcium.errors import InputError

__all__ = ["TARGETS", "transfer_report", "write_transfer_markdown"]

# Issue 14's "Done when" for the default-trained model tested on the shifted family.
TARGETS = {"icc_2_1": 0.90, "kappa_5class": 0.85, "lesion_f1": 0.80, "zero_scored_zero": 0.90,
           "heavy_below_half": 0}
HEAVY_AGATSTON = 400.0


def _truth_facts(entry: Any) -> dict[str, Any]:
    """Acquisition facts of a scan from its truth JSON (synthetic sets), or {}."""
    if entry is None or entry.truth is None:
        return {}
    try:
        gen = json.loads(Path(entry.truth).read_text()).get("generation", {})
    except (OSError, json.JSONDecodeError):
        return {}
    kernel = gen.get("kernel")
    return {"gated": gen.get("gated"), "kernel": kernel.get("name") if isinstance(kernel, dict) else kernel,
            "spacing_mm": gen.get("spacing_mm")}


def _figures(agreement: dict[str, Any]) -> dict[str, Any]:
    scores = agreement.get("scores") or {}
    lesions = agreement.get("lesions") or {}
    rows = agreement.get("scans", [])
    zero = [r for r in rows if r["reference_agatston"] == 0]
    heavy = [r for r in rows if r["reference_agatston"] > HEAVY_AGATSTON]
    below = [r["scan_id"] for r in heavy if r["predicted_agatston"] < 0.5 * r["reference_agatston"]]
    kappa = ((scores.get("kappa") or {}).get("5-class") or {})
    return {
        "n_scans": len(rows),
        "icc_2_1": scores.get("icc_2_1"),
        "icc_2_1_ci": scores.get("icc_2_1_ci"),
        "kappa_5class": kappa.get("kappa_linear"),
        "kappa_5class_ci": kappa.get("kappa_linear_ci"),
        "category_accuracy_5class": kappa.get("accuracy"),
        "lesion_f1": lesions.get("f1"),
        "lesion_f1_ci": lesions.get("f1_ci"),
        "lesion_sensitivity": lesions.get("sensitivity"),
        "lesion_ppv": lesions.get("ppv"),
        "false_positives_per_scan": lesions.get("false_positives_per_scan"),
        "n_zero": len(zero),
        "zero_scored_zero": (sum(r["predicted_agatston"] == 0 for r in zero) / len(zero)) if zero else None,
        "n_heavy": len(heavy),
        "heavy_below_half": len(below),
        "heavy_below_half_ids": below,
        "non_coronary_counted_as_coronary": agreement.get("non_coronary_counted_as_coronary", {}).get("lesions"),
    }


def _passes(fig: dict[str, Any]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        v = fig.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[key] = None
        elif key == "heavy_below_half":
            out[key] = v <= target if fig["n_heavy"] else None
        else:
            out[key] = v >= target
    return out


def transfer_report(ckpt_dir: str | Path, manifest: str | Path, out_dir: str | Path, split: str | None = None,
                    *, overwrite: bool = False, progress: bool = False, device: Any = None) -> dict[str, Any]:
    """Score ``manifest`` (all splits, or ``split``) with ``ckpt_dir``'s model; write transfer.json / transfer.md.

    Returns the report dict: the figures, pass / fail against issue 14's targets, the per-patient rows and paths.
    Inference outputs go to ``out_dir/inference`` (existing results are replaced only with ``overwrite``).
    """
    from coronary_calcium.inference import evaluate_agreement, run_inference
    from coronary_calcium.io.manifest import load_manifest

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    if not (ckpt_dir / "thresholds.json").is_file():
        raise InputError(ckpt_dir, "no thresholds.json here: give a trained and calibrated checkpoint folder")
    m = load_manifest(manifest)
    run = run_inference(m.path, out_dir / "inference", ckpt_dir=ckpt_dir, split=split, overwrite=overwrite,
                        progress=progress, device=device, overlays=False, report=True)
    agreement = run.agreement if run.agreement is not None else evaluate_agreement(run.output_dir, m)
    entries = {e.scan_id: e for e in m.scans}
    rows = []
    for r in agreement["scans"]:
        les = r.get("lesions") or {}
        rows.append({
            "scan_id": r["scan_id"], **_truth_facts(entries.get(r["scan_id"])),
            "reference_agatston": r["reference_agatston"], "predicted_agatston": r["predicted_agatston"],
            "reference_category": r["reference_category"], "predicted_category": r["predicted_category"],
            "tp": les.get("tp_ref"), "fn": les.get("false_negatives"), "fp": les.get("false_positives"),
            "non_coronary_kept": (r.get("non_coronary_kept") or {}).get("lesions"),
        })
    fig = _figures(agreement)
    result = {
        "ckpt_dir": str(ckpt_dir), "manifest": str(m.path), "family": m.name, "split": split or "all",
        "figures": fig, "targets": dict(TARGETS), "pass": _passes(fig), "per_artery": agreement.get("per_artery"),
        "scans": rows,
        "failed_scans": [{"scan_id": s, "reason": why} for s, why in run.failures],
        "files": {"inference": str(run.output_dir),
                  "agreement": str(run.agreement_json) if run.agreement_json else None},
        "notes": ["evaluated once with the checkpoint's own thresholds; nothing was tuned on this family"]
        + list(agreement.get("notes", [])),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "transfer.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=float) + "\n")
    write_transfer_markdown(result, out_dir / "transfer.md")
    result["files"].update(json=str(out_dir / "transfer.json"), markdown=str(out_dir / "transfer.md"))
    return result


def _ci(v: Any, ci: dict[str, Any] | None) -> str:
    """The value with its 95 % interval ("0.958 (0.91-0.98)"), "n/a" when missing."""
    from coronary_calcium.inference.agreement_report import format_ci  # lazy, as in transfer_report: loads torch

    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format_ci(v, ci)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{100 * v:.0f} %" if pct else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def write_transfer_markdown(result: dict[str, Any], path: str | Path) -> Path:
    """Write the report as Markdown: headline figures against the targets, then one row per patient."""
    from coronary_calcium.inference.agreement_report import artery_table

    f, ok = result["figures"], result["pass"]
    verdict = {True: "met", False: "NOT met", None: "n/a"}
    lines = [
        f"# Transfer report: {result.get('family') or 'data set'} ({result['split']})", "",
        f"- model: `{result['ckpt_dir']}`", f"- manifest: `{result['manifest']}`",
        f"- scans scored: {f['n_scans']}"
        + (f" ({len(result['failed_scans'])} failed)" if result["failed_scans"] else ""),
        "", "| figure | value (95 % CI) | target | |", "|---|---|---|---|",
        f"| ICC(2,1) of Agatston | {_ci(f['icc_2_1'], f.get('icc_2_1_ci'))} | >= {TARGETS['icc_2_1']} | "
        f"{verdict[ok['icc_2_1']]} |",
        f"| 5-class linear kappa | {_ci(f['kappa_5class'], f.get('kappa_5class_ci'))} | "
        f">= {TARGETS['kappa_5class']} | {verdict[ok['kappa_5class']]} |",
        f"| lesion F1 (count) | {_ci(f['lesion_f1'], f.get('lesion_f1_ci'))} | >= {TARGETS['lesion_f1']} | "
        f"{verdict[ok['lesion_f1']]} |",
        f"| zero-calcium patients scored 0 | {_fmt(f['zero_scored_zero'], pct=True)} of {f['n_zero']} | >= 90 % | "
        f"{verdict[ok['zero_scored_zero']]} |",
        f"| heavy (> 400) patients scored below half their truth | {f['heavy_below_half']} of {f['n_heavy']} | 0 | "
        f"{verdict[ok['heavy_below_half']]} |",
        "", f"5-class accuracy {_fmt(f['category_accuracy_5class'], pct=True)}; lesion sensitivity "
        f"{_fmt(f['lesion_sensitivity'])}, PPV {_fmt(f['lesion_ppv'])}, false positives per scan "
        f"{_fmt(f['false_positives_per_scan'])}; non-coronary lesions counted as coronary: "
        f"{_fmt(f['non_coronary_counted_as_coronary'])}. 95 % CI: F-based for the ICC, percentile bootstrap over "
        "patients for kappa and lesion F1.", "",
        *([artery_table(result), ""] if result.get("per_artery") else []),
        "| scan | gated | kernel | reference | predicted | ref. class | pred. class | TP | FN | FP "
        "| non-coronary kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["scans"]:
        lines.append(
            f"| {r['scan_id']} | {_fmt(r.get('gated'))} | {r.get('kernel') or 'n/a'} | {r['reference_agatston']:.1f} | "
            f"{r['predicted_agatston']:.1f} | {r['reference_category']} | {r['predicted_category']} | "
            f"{_fmt(r['tp'])} | {_fmt(r['fn'])} | {_fmt(r['fp'])} | {_fmt(r['non_coronary_kept'])} |")
    for s in result["failed_scans"]:
        lines.append(f"\nFailed: {s['scan_id']}: {s['reason']}")
    lines += [""] + [f"- {n}" for n in result.get("notes", [])] + [""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
