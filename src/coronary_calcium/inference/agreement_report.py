"""Agreement of inference results with the references of a manifest (label volumes, COCA XML, reference scores
such as COCA's scores.xlsx, or truth JSON).

Per scan: the reference Agatston (from the label volume or COCA XML scored with the same rules, else the manifest's
reference scores, else the truth JSON's ``agatston``), the reference coronary lesions (`find_lesions` with the
labels), lesion matching (`match_lesions`) and the kept lesions lying on aortic / valve reference voxels (labels 5 /
6: non-coronary calcium counted as coronary). Over the scans: `score_agreement` (ICC(2,1) with its F-based 95 %
interval, Pearson, Spearman, Bland-Altman, linearly weighted kappa, confusion matrix and accuracy per risk scheme and
for CAC-DRS, accuracy at 0 / 100 / 400, with bootstrap intervals over patients), pooled lesion figures
(`pool_lesion_matches`: sensitivity, PPV, F1 by count and volume with F1 intervals, false positives per scan) where
the references have lesions; score-only references report lesion figures as not available. Where references have
per-artery scores (label volumes, COCA XML, scores with LM / LAD / LCX / RCA columns), ``per_artery`` holds
`artery_agreement` per artery over the scans whose prediction names every lesion's artery (the same sums as
result.json's ``per_artery``).
`agreement_table` renders the headline figures as a markdown or HTML table ("0.958 (0.91-0.98)"), `artery_table`
the per-artery figures.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coronary_calcium.errors import InputError
from coronary_calcium.inference.arteries import artery_assignment
from coronary_calcium.inference.thresholds import scoring_config_from_dict
from coronary_calcium.io.images import read_image
from coronary_calcium.io.manifest import Manifest, ScanEntry, load_manifest
from coronary_calcium.io.scans import read_scan
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import AORTIC, ARTERY_NAMES, VALVE
from coronary_calcium.scoring.agatston import (
    DEFAULT_RISK_SCHEME,
    RISK_SCHEMES,
    Lesion,
    ScoringConfig,
    find_lesions,
    risk_category,
)
from coronary_calcium.scoring.agreement import (
    artery_agreement,
    bootstrap_weights,
    cac_drs,
    lesion_f1_ci,
    match_lesions,
    pool_lesion_matches,
    score_agreement,
)

__all__ = ["Prediction", "ScanReference", "agreement_table", "artery_table", "evaluate_agreement", "format_ci",
           "scan_reference", "sanitize_scan_id"]

NON_CORONARY_LABELS = (AORTIC, VALVE)


def sanitize_scan_id(scan_id: str) -> str:
    """A scan id usable as a folder name: characters other than letters, digits, '.', '_' and '-' become '_'."""
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(scan_id)).strip(".")
    return out or "scan"


@dataclass
class ScanReference:
    """A scan's reference: its Agatston, its per-artery Agatston (LM, LAD, LCX, RCA; None where unknown) and, from a
    label volume or COCA XML, its coronary lesions (with voxels) and the flat indices of its aortic / valve voxels
    (None when the reference cannot hold them: reference scores, truth JSON)."""

    source: str
    agatston: float
    lesions: list[Lesion] | None = None
    non_coronary: np.ndarray | None = None
    arteries: dict[str, float] | None = None


def _lesion_arteries(lesions: list[Lesion]) -> dict[str, float] | None:
    """Agatston per artery of lesions that all have a known artery; None when any is unassigned."""
    if any(les.artery not in ARTERY_NAMES for les in lesions):
        return None
    return {a: float(sum(les.agatston for les in lesions if les.artery == a)) for a in ARTERY_NAMES}


@dataclass
class Prediction:
    """What the agreement needs of one scan's inference: its id, Agatston and kept lesions (with voxels)."""

    scan_id: str
    agatston: float
    lesions: list[Lesion]
    reference: ScanReference | None = None


def _truth_agatston(path: Path) -> float:
    try:
        value = json.loads(Path(path).read_text())["agatston"]
        return float(value)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"truth JSON without a numeric 'agatston' ({exc})") from None


def scan_reference(
    volume: CTVolume | None,
    labels: np.ndarray | None,
    *,
    truth: str | Path | None = None,
    config: ScoringConfig = ScoringConfig(),
    source: str = "labels",
) -> ScanReference | None:
    """The reference of one scan from its label volume (preferred) or its truth JSON; None without either."""
    if labels is not None and volume is not None:
        lesions = find_lesions(volume.hu, volume.spacing, labels=labels, slice_thickness=volume.slice_thickness,
                               config=config)
        agatston = float(sum(les.agatston for les in lesions))
        non_coronary = None
        if source == "labels":
            non_coronary = np.flatnonzero(np.isin(labels, NON_CORONARY_LABELS).reshape(-1))
        return ScanReference(source=source, agatston=agatston, lesions=lesions, non_coronary=non_coronary,
                             arteries=_lesion_arteries(lesions))
    if truth is not None:
        return ScanReference(source="truth", agatston=_truth_agatston(Path(truth)))
    return None


def _scores_reference(entry: ScanEntry) -> ScanReference:
    """A score-only reference (the manifest's "scores" or a COCA scores.xlsx row): no lesions, arteries when all
    four are given."""
    scores = entry.reference_scores or {}
    arteries = {a: float(scores[a]) for a in ARTERY_NAMES} if all(a in scores for a in ARTERY_NAMES) else None
    source = "coca_scores" if entry.coca_scores is not None else "scores"
    return ScanReference(source=source, agatston=float(scores["total"]), arteries=arteries)


def _entry_reference(entry: ScanEntry, config: ScoringConfig) -> ScanReference | None:
    if entry.labels is None and entry.coca_xml is None and entry.reference_scores is not None:
        return _scores_reference(entry)
    if entry.labels is None and entry.coca_xml is None and entry.truth is None:
        return None
    if entry.labels is None and entry.coca_xml is None:
        return scan_reference(None, None, truth=entry.truth, config=config)
    volume, labels = read_scan(entry)
    source = "labels" if entry.labels is not None else "coca_xml"
    return scan_reference(volume, labels, truth=entry.truth, config=config, source=source)


def _predictions_from_dir(folder: Path) -> tuple[list[Prediction], ScoringConfig | None]:
    """Predictions read back from an inference output folder (result.json + lesions.nii.gz per scan)."""
    predictions, config = [], None
    for result_file in sorted(folder.glob("*/result.json")):
        payload = json.loads(result_file.read_text())
        if payload.get("status") != "ok":
            continue
        config = config or scoring_config_from_dict(payload["scoring"])
        ids = np.rint(read_image(result_file.parent / payload["files"]["lesion_mask"]).hu).astype(np.int64)
        flat = ids.reshape(-1)
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(len(payload["lesions"]) + 2))
        lesions = []
        for rec in payload["lesions"]:
            i = int(rec["id"])
            lesions.append(Lesion(
                label=0, artery=rec["artery"], slices=[rec["slice"]], area_mm2=[rec["area_mm2"]],
                peak_hu=rec["peak_hu"], mean_hu=rec["mean_hu"], volume_mm3=rec["volume_mm3"], mass_mg=rec["mass_mg"],
                agatston=rec["agatston"], centroid_zyx=tuple(rec["centroid_voxel_zyx"]), n_voxels=rec["n_voxels"],
                voxels=np.sort(order[bounds[i] : bounds[i + 1]]),
            ))
        predictions.append(Prediction(scan_id=payload["scan_id"], agatston=float(payload["totals"]["agatston"]),
                                      lesions=lesions))
    return predictions, config


def _as_prediction(item: Any) -> Prediction:
    if isinstance(item, Prediction):
        return item
    if all(hasattr(item, a) for a in ("scan_id", "agatston", "lesions")):
        return Prediction(scan_id=item.scan_id, agatston=float(item.agatston), lesions=list(item.lesions),
                          reference=getattr(item, "reference", None))
    raise InputError("results", f"expected ScanResult or Prediction objects, got {type(item).__name__}")


def _scan_config(item: Any) -> ScoringConfig | None:
    score = getattr(item, "score", None)
    if score is not None and isinstance(getattr(score, "config", None), dict):
        return scoring_config_from_dict(score.config)
    return None


def _match_summary(match: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in match.items() if k not in ("matches", "false_positive_indices")}


@dataclass
class _Pairs:
    """What the scans paired with a reference contribute to the data-set figures."""

    scans: list[dict[str, Any]] = field(default_factory=list)
    refs: list[float] = field(default_factory=list)
    preds: list[float] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # the bootstrap's unit
    ref_arteries: list[dict[str, float] | None] = field(default_factory=list)
    pred_arteries: list[dict[str, float] | None] = field(default_factory=list)
    matches: list[dict[str, Any]] = field(default_factory=list)
    match_patients: list[str] = field(default_factory=list)
    assignments: list[dict[str, Any]] = field(default_factory=list)  # matched lesions: assigned vs reference artery
    non_coronary: dict[str, Any] = field(default_factory=lambda: {
        "lesions": 0, "scans_with_any": 0, "agatston": 0.0, "volume_mm3": 0.0, "n_scans_with_aortic_valve_labels": 0})
    unpaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load_predictions(results: str | Path | Iterable[Any],
                      config: ScoringConfig | None) -> tuple[list[Prediction], ScoringConfig]:
    if isinstance(results, (str, Path)):
        predictions, dir_config = _predictions_from_dir(Path(results))
        config = config or dir_config
    else:
        items = list(results)
        predictions = [_as_prediction(r) for r in items]
        if config is None:
            config = next((c for c in map(_scan_config, items) if c is not None), None)
    return predictions, config or ScoringConfig()


def _non_coronary_kept(p: Prediction, reference: ScanReference) -> dict[str, Any]:
    on = [les for les in p.lesions if np.isin(np.asarray(les.voxels), reference.non_coronary).any()]
    return {"lesions": len(on), "agatston": float(sum(les.agatston for les in on)),
            "volume_mm3": float(sum(les.volume_mm3 for les in on))}


def _pair_scans(predictions: list[Prediction], manifest: Manifest, config: ScoringConfig) -> _Pairs:
    """Each prediction with its reference (its own, else the manifest entry's): one row per paired scan."""
    entries = {sanitize_scan_id(s.scan_id): s for s in manifest.scans}
    pairs = _Pairs()
    nc = pairs.non_coronary
    for p in predictions:
        entry = entries.get(sanitize_scan_id(p.scan_id))
        reference = p.reference
        if reference is None and entry is not None:
            try:
                reference = _entry_reference(entry, config)
            except InputError as exc:  # one unreadable reference must not sink the whole report
                pairs.notes.append(f"scan {p.scan_id}: reference not used: {exc}")
        if reference is None:
            pairs.unpaired.append(p.scan_id)
            continue
        pred_arteries = _lesion_arteries(p.lesions)
        row: dict[str, Any] = {
            "scan_id": p.scan_id,
            "reference_source": reference.source,
            "reference_agatston": reference.agatston,
            "predicted_agatston": p.agatston,
            "reference_category": risk_category(reference.agatston, DEFAULT_RISK_SCHEME),
            "predicted_category": risk_category(p.agatston, DEFAULT_RISK_SCHEME),
            "reference_cac_drs": cac_drs(reference.agatston, reference.arteries)["cac_drs"],
            "predicted_cac_drs": cac_drs(p.agatston, pred_arteries)["cac_drs"],
            "lesions": None,  # stays None for score-only references: no lesions to match
        }
        if reference.arteries is not None:
            row["reference_arteries"] = reference.arteries
        pairs.refs.append(reference.agatston)
        pairs.preds.append(p.agatston)
        pairs.patients.append(entry.patient_id if entry is not None else p.scan_id)
        pairs.ref_arteries.append(reference.arteries)
        pairs.pred_arteries.append(pred_arteries)
        if reference.lesions is not None:
            m = match_lesions(reference.lesions, p.lesions)
            pairs.matches.append(m)
            pairs.assignments.extend(_assignments(m, reference.lesions, p.lesions))
            pairs.match_patients.append(pairs.patients[-1])
            row["lesions"] = _match_summary(m)
        if reference.non_coronary is not None:
            row["non_coronary_kept"] = kept = _non_coronary_kept(p, reference)
            nc["n_scans_with_aortic_valve_labels"] += 1
            nc["lesions"] += kept["lesions"]
            nc["scans_with_any"] += bool(kept["lesions"])
            nc["agatston"] += kept["agatston"]
            nc["volume_mm3"] += kept["volume_mm3"]
        pairs.scans.append(row)
    return pairs


def _assignments(match: dict[str, Any], ref: list[Lesion], pred: list[Lesion]) -> list[dict[str, Any]]:
    """Each matched predicted lesion (once, with its first reference lesion): its assigned artery, the reference
    lesion's artery and its Agatston, as `artery_assignment` reads them."""
    seen: set[int] = set()
    out = []
    for pair in match["matches"]:
        i = int(pair["pred"])
        if i not in seen:
            seen.add(i)
            out.append({"artery": pred[i].artery, "reference_label": ref[int(pair["ref"])].artery,
                        "agatston": pred[i].agatston})
    return out


def _lesion_figures(pairs: _Pairs, n_resamples: int, seed: int) -> dict[str, Any] | None:
    """Pooled lesion figures with F1 intervals (bootstrap over the patients of the scans with reference lesions)."""
    if not pairs.matches:
        return None
    pooled = pool_lesion_matches(pairs.matches)
    if n_resamples:
        pooled.update(lesion_f1_ci(pairs.matches, bootstrap_weights(pairs.match_patients, n_resamples, seed)))
    return pooled


def _per_artery(pairs: _Pairs, n_resamples: int, seed: int) -> dict[str, Any] | None:
    """`artery_agreement` over the paired scans, with a note on scans left out (a reference without arteries, or a
    prediction with a lesion of unknown artery)."""
    n_ref = sum(r is not None for r in pairs.ref_arteries)
    if not n_ref:
        return None
    block = artery_agreement(pairs.ref_arteries, pairs.pred_arteries, pairs.patients, n_resamples=n_resamples,
                             seed=seed)
    n_both = sum(r is not None and p is not None for r, p in zip(pairs.ref_arteries, pairs.pred_arteries))
    if block is None:
        pairs.notes.append(f"per-artery agreement needs at least 2 scans whose reference and prediction both have "
                           f"per-artery scores; {n_both} available (a prediction with any lesion of unknown artery "
                           "has none)")
    elif n_both < len(pairs.scans):
        pairs.notes.append(f"per-artery agreement over {n_both} of {len(pairs.scans)} scans: the others' reference "
                           "has no arteries or their prediction has lesions of unknown artery")
    return block


def evaluate_agreement(
    results: str | Path | Iterable[Any],
    manifest: Manifest | str | Path,
    *,
    config: ScoringConfig | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement of predictions with the manifest's references, JSON-ready.

    results: `ScanResult` / `Prediction` objects, or an inference output folder (read back from its result.json
    and lesions.nii.gz files). Results are paired with manifest scans by scan id. config: the scoring rules for
    the references (default: the rules the results were scored with). Intervals: 95 %, F-based for the ICC,
    percentile bootstrap over patients (``n_resamples`` resamples seeded by ``seed``; 0: none) for kappas,
    accuracies and lesion F1.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    predictions, config = _load_predictions(results, config)
    pairs = _pair_scans(predictions, manifest, config)
    scans, notes = pairs.scans, pairs.notes
    scores = None
    if len(pairs.refs) >= 2:
        scores = score_agreement(pairs.refs, pairs.preds, schemes=tuple(RISK_SCHEMES), groups=pairs.patients,
                                 n_resamples=n_resamples, seed=seed, ref_arteries=pairs.ref_arteries,
                                 pred_arteries=pairs.pred_arteries)
    else:
        notes.append(f"score agreement needs at least 2 scans with a reference; {len(pairs.refs)} available")
    per_artery = _per_artery(pairs, n_resamples, seed)
    score_only = sum(row["lesions"] is None for row in scans)
    if score_only:
        notes.append(f"{score_only} scan(s) have score-only references (no mask): lesion-level figures are not "
                     "available for them" + ("" if pairs.matches else ", so none are reported"))
    nc = pairs.non_coronary
    if nc["n_scans_with_aortic_valve_labels"] < len(scans):
        notes.append(f"{len(scans) - nc['n_scans_with_aortic_valve_labels']} scan(s) have references without aortic "
                     "/ valve labels (COCA XML, reference scores or truth JSON): non-coronary calcium counted as "
                     "coronary cannot be detected there")
    return {
        "n_scans": len(scans),
        "scoring": config.to_dict(),
        "scores": scores,
        "per_artery": per_artery,
        "lesions": _lesion_figures(pairs, n_resamples, seed),
        "artery_assignment": (artery_assignment(pairs.assignments)
                              if any(a["artery"] in ARTERY_NAMES for a in pairs.assignments) else None),
        "lesions_available": {"n_scans_with_lesion_reference": len(pairs.matches), "n_scans_score_only": score_only},
        "non_coronary_counted_as_coronary": {
            **nc, "rule": "a kept lesion with at least one voxel on a reference aortic (5) or valve (6) voxel"},
        "scans": scans,
        "unpaired": pairs.unpaired,
        "notes": notes,
    }


# --- tables ----------------------------------------------------------------------------------------------------------


def format_ci(value: float | None, ci: dict[str, Any] | None = None, digits: int = 3) -> str:
    """"0.958 (0.91-0.98)": the value with ``digits`` decimals, its interval with one fewer; "n/a" for None, the value
    alone without an interval, "to" between bounds when one is negative ("0.29 (-0.13 to 0.72)")."""
    if value is None:
        return "n/a"
    text = f"{float(value):.{digits}f}"
    if not ci or ci.get("lower") is None or ci.get("upper") is None:
        return text
    d = max(digits - 1, 1)
    lo, hi = float(ci["lower"]), float(ci["upper"])
    sep = " to " if min(lo, hi) < 0 else "-"
    return f"{text} ({lo:.{d}f}{sep}{hi:.{d}f})"


def _table_rows(a: dict[str, Any]) -> list[tuple[str, str]]:
    s, les = a.get("scores") or {}, a.get("lesions")
    rows: list[tuple[str, str]] = []
    if s:
        rows.append(("ICC(2,1) of Agatston", format_ci(s["icc_2_1"], s.get("icc_2_1_ci"))))
        for scheme, k in s["kappa"].items():
            rows.append((f"{scheme} linearly weighted kappa", format_ci(k["kappa_linear"], k.get("kappa_linear_ci"))))
            rows.append((f"{scheme} category accuracy", format_ci(k["accuracy"], k.get("accuracy_ci"))))
        drs = s.get("cac_drs")
        if drs:
            rows.append(("CAC-DRS (0 / 1-99 / 100-299 / >=300) linearly weighted kappa",
                         format_ci(drs["kappa_linear"], drs.get("kappa_linear_ci"))))
            rows.append(("CAC-DRS category accuracy", format_ci(drs["accuracy"], drs.get("accuracy_ci"))))
            vessels = drs.get("vessels") or {}
            rows.append((f"CAC-DRS vessel count (N) accuracy ({vessels.get('n', 0)} scans with arteries)",
                         format_ci(vessels.get("accuracy"))))
        for t in s["threshold_accuracy"].values():
            rows.append((f"accuracy {t['rule']}", format_ci(t["accuracy"], t.get("accuracy_ci"))))
    if les:
        rows.append(("lesion F1 (by count)", format_ci(les["f1"], les.get("f1_ci"))))
        rows.append(("lesion F1 (by volume)", format_ci(les["f1_volume"], les.get("f1_volume_ci"))))
    else:
        rows.append(("lesion F1", "not available (score-only references)" if a.get("n_scans") else "n/a"))
    assigned = a.get("artery_assignment")
    if assigned and assigned.get("agatston_share_right") is not None:
        rows.append(("Agatston of matched lesions in the right artery", format_ci(assigned["agatston_share_right"])))
    return rows


def _render(header: tuple[str, ...], rows: list[tuple[str, ...]], caption: str, fmt: str) -> str:
    """A markdown table with its caption below, or an HTML table with it as <caption>."""
    if fmt not in ("markdown", "html"):
        raise InputError("fmt", f'must be "markdown" or "html", got {fmt!r}')
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + ["", caption]) + "\n"
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bootstrap_text(agreement: dict[str, Any]) -> str:
    boot = (agreement.get("scores") or {}).get("bootstrap") or {}
    return (f"percentile bootstrap over {boot.get('n_units', 0)} {boot.get('unit', 'patient')}s "
            f"({boot.get('n_resamples', 0)} resamples, seed {boot.get('seed', 0)})")


def agreement_table(agreement: dict[str, Any], fmt: str = "markdown") -> str:
    """The headline figures of an `evaluate_agreement` result as a markdown or HTML table: statistic, value (95 %
    CI). Intervals: F-based for the ICC, percentile bootstrap over patients for the rest."""
    caption = (f"{agreement.get('n_scans', 0)} scans; 95 % CI: F-based for the ICC, {_bootstrap_text(agreement)} "
               "for the rest")
    return _render(("Statistic", "Value (95 % CI)"), _table_rows(agreement), caption, fmt)


def artery_table(agreement: dict[str, Any], fmt: str = "markdown") -> str:
    """The ``per_artery`` block of an `evaluate_agreement` result (or of any dict holding one) as a markdown or
    HTML table, one row per artery; "" when there is none."""
    block = agreement.get("per_artery")
    if not block:
        return ""
    rows = []
    for artery, a in block.items():
        ba, presence = a["bland_altman"], a["presence"]
        rows.append((artery, str(a["n_scans"]), format_ci(a["icc_2_1"], a.get("icc_2_1_ci")),
                     f"{ba['bias']:.1f} ({ba['lower']:.1f} to {ba['upper']:.1f})",
                     format_ci(presence["kappa_linear"], presence.get("kappa_linear_ci")),
                     format_ci(presence["accuracy"], presence.get("accuracy_ci"))))
    first = next(iter(block.values()))
    caption = (f"Agatston per artery over {first['n_scans']} scans of {first['n_patients']} patients; 95 % CI: "
               "F-based for the ICC, percentile bootstrap over patients for kappa and accuracy; bias and limits: "
               "Bland-Altman of predicted - reference")
    header = ("Artery", "Scans", "ICC(2,1) (95 % CI)", "Bias (limits of agreement)",
              "Calcium present (>0) kappa (95 % CI)", "Calcium present accuracy (95 % CI)")
    return _render(header, rows, caption, fmt)
