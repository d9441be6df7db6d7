"""Files of an inference run: per scan ``result.json``, ``lesions.nii.gz`` and slice overlays; per run
``summary.csv`` and ``report.html``. Every file is written atomically (whole or absent).

Per scan folder ``<output_dir>/<scan_id>/``:
- ``result.json``: the `ScanResult` (written last: its presence means the scan's outputs are complete);
- ``lesions.nii.gz``: uint16 lesion ids (1..n, the ``lesions`` of result.json) on the input's grid, 0 elsewhere;
- ``slices/slice_NNN.png``: each positive slice (probability >= t_slice) or slice with a kept lesion: left the CT
  with kept lesions outlined in green and rejected candidates in orange, right the same with the CAM heat map;
- with ``dicom_out`` and a DICOM series input: ``calcium_seg.dcm`` (DICOM SEG of the kept lesions) and
  ``calcium_sr.dcm`` (Comprehensive 3D SR of the scores), see `coronary_calcium.inference.dicom_outputs`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import html
import struct
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from coronary_calcium import __version__
from coronary_calcium.errors import InputError
from coronary_calcium.inference.agreement_report import agreement_table, artery_table
from coronary_calcium.inference.scan import ScanResult
from coronary_calcium.io.images import write_nifti
from coronary_calcium.io.volume import CTVolume
from coronary_calcium.labels import ARTERY_NAMES
from coronary_calcium.report.files import atomic_path, sigint_held, uninterrupted, write_csv, write_json

RESULT_FILE = "result.json"
LESION_MASK_FILE = "lesions.nii.gz"
SLICES_DIR = "slices"
SUMMARY_FILE = "summary.csv"
REPORT_FILE = "report.html"
AGREEMENT_FILE = "agreement.json"
# Per-artery Agatston in COCA's order (LM, LAD, LCX, RCA), then the total; "unknown" holds lesions no artery was
# assigned to (a scan without a heart, or thresholds without an artery model).
ARTERY_COLUMNS = tuple(f"agatston_{a}" for a in (*ARTERY_NAMES, "unknown"))
SUMMARY_COLUMNS = ("scan_id", "status", "reason", *ARTERY_COLUMNS, "agatston", "volume_mm3", "mass_mg", "category",
                   "n_lesions", "seconds", "source")
KEPT_RGB = (0.0, 1.0, 0.0)
REJECTED_RGB = (1.0, 0.55, 0.0)
MIN_PANEL_PX = 256
OVERLAY_MARGIN_PX = 8  # around a kept lesion outside the network's field of view, so its outline shows
OVERLAY_THREADS = 2
# report.html embeds key images up to this many bytes in all, and links the rest.
EMBED_BUDGET_BYTES = 20 * 1024 * 1024
REPORT_MAX_LESIONS = 20


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) image, uint8 or [0, 1] floats, as an 8-bit RGB PNG.

    Written by hand because Pillow has no option to leave out its adaptive row filters, which cost more than they
    save on an overlay (flat panels, a smooth heat map): rows without a filter, zlib level 1.
    """
    rgb = np.asarray(rgb)
    image = rgb if rgb.dtype == np.uint8 else np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    rows = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each row: filter type 0 (none), then its pixels
    rows[:, 1:] = image.reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits per channel, RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _png_chunk(b"IEND", b""))


def _ring(mask: np.ndarray) -> np.ndarray:
    """The pixels just outside ``mask`` (its outline, leaving the calcium itself visible)."""
    ring = np.zeros_like(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size:  # dilated within the mask's bounding box grown by one pixel, not over the whole slice
        box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
        ring[box] = ndimage.binary_dilation(mask[box], structure=np.ones((3, 3), bool)) & ~mask[box]
    return ring


@functools.lru_cache(maxsize=4)
def _lut(cmap: str) -> np.ndarray:
    """The colormap's 256 RGB entries (matplotlib quantises a colormap to 256 levels too)."""
    import matplotlib

    return np.rint(matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)


def render_overlay(
    hu: np.ndarray,
    cam: np.ndarray | None,
    kept: np.ndarray,
    rejected: np.ndarray | None = None,
    window: tuple[float, float] = (-250.0, 950.0),
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """RGB uint8 image (H, 2W + 4, 3): CT with outlines | CT with CAM heat and outlines (small slices upscaled).

    The heat panel blends like `coronary_calcium.explain.handlers.overlay`: weight ``alpha * heat`` per pixel, so a
    weak map leaves the slice visible. Computed on one (H, W) plane at a time and written once into the 8-bit
    image (a 512 x 512 slice for every positive slice of a scan).
    """
    hu = np.asarray(hu, dtype=np.float32)
    scale = max(1, int(np.ceil(MIN_PANEL_PX / max(hu.shape))))
    if scale > 1:
        up = lambda a: np.kron(a, np.ones((scale, scale), dtype=a.dtype))  # noqa: E731 - nearest upscaling
        hu, kept = up(hu), up(kept.astype(np.uint8)) > 0
        rejected = None if rejected is None else up(rejected.astype(np.uint8)) > 0
        cam = None if cam is None else up(np.asarray(cam, dtype=np.float32))
    h, w = hu.shape
    lo, hi = float(window[0]), float(window[1])
    gray = np.clip((hu - lo) * np.float32(255.0 / (hi - lo)), 0.0, 255.0)
    out = np.full((h, 2 * w + 4, 3), 255, dtype=np.uint8)  # the 4-pixel gap stays white
    left, right = out[:, :w], out[:, w + 4:]
    left[...] = np.rint(gray)[..., None]
    if cam is None:
        right[...] = left
    else:
        heat = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
        colour = _lut(cmap)[np.rint(heat * 255).astype(np.uint8)]
        weight = np.float32(alpha) * heat
        for c in range(3):
            right[..., c] = np.rint(gray + weight * (colour[..., c] - gray))
    rings = []
    if rejected is not None and rejected.any():
        rings.append((_ring(rejected), REJECTED_RGB))
    if kept.any():
        rings.append((_ring(kept), KEPT_RGB))
    for panel in (left, right):
        for ring, rgb in rings:
            panel[ring] = np.rint(np.asarray(rgb) * 255).astype(np.uint8)
    return out


def write_scan_outputs(
    result: ScanResult,
    volume: CTVolume,
    scan_dir: str | Path,
    *,
    overlays: bool = True,
    started: float | None = None,
    dicom_out: bool = False,
) -> dict[str, Any]:
    """Write the scan's lesion mask, overlays, (``dicom_out``) DICOM SEG and SR, and (last) result.json; return the
    result.json content.

    ``started``: `time.perf_counter()` when the scan's processing began (for the recorded seconds). With
    ``dicom_out``, a scan that is not a DICOM series (or whose files cannot be referenced) gets a note instead of
    the DICOM files.
    """
    scan_dir = Path(scan_dir)
    scan_dir.mkdir(parents=True, exist_ok=True)
    lesion_mask = result.lesion_mask()
    write_nifti(lesion_mask, volume, scan_dir / LESION_MASK_FILE)
    pngs: list[str] = []
    shown = None
    if overlays and result.cam_maps is not None:
        kept = lesion_mask > 0
        shown = overlay_window(result, kept)
        pngs = _write_overlays(result, volume, scan_dir, kept, shown)
    payload = result.to_dict()
    if started is not None:
        result.seconds = time.perf_counter() - started
        payload["seconds"] = round(result.seconds, 3)
    payload["files"] = {
        "lesion_mask": LESION_MASK_FILE,
        "lesion_mask_values": "lesion id (1..n, as in 'lesions'); 0 elsewhere",
        "overlays": pngs,
        "overlay_legend": "left: CT with kept (coronary) lesions outlined in green, rejected candidates in orange; "
        "right: the same with the CAM of the positive class; the part of each slice shown is overlay_window",
        "overlay_window": None if shown is None else [[shown[0].start, shown[0].stop], [shown[1].start, shown[1].stop]],
        "overlay_window_axes": "rows, columns of the slice (first, last + 1): the network's field of view, grown to "
        "hold every kept lesion",
    }
    payload["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    payload["software"] = {"coronary_calcium": __version__}
    if dicom_out:
        _add_dicom_outputs(result, payload, lesion_mask, volume, scan_dir)
    write_json(scan_dir / RESULT_FILE, payload)
    return payload


def _add_dicom_outputs(result: ScanResult, payload: dict[str, Any], lesion_mask: np.ndarray, volume: CTVolume,
                       scan_dir: Path) -> None:
    """Write the DICOM SEG and SR from ``payload`` and list them in its files, or note why there are none."""
    from coronary_calcium.inference.dicom_outputs import source_files, write_dicom_outputs

    if source_files(volume) is None:
        note = "DICOM outputs (--dicom-out) not written: the input is not a DICOM series"
    else:
        try:
            payload["files"]["dicom"] = write_dicom_outputs(payload, lesion_mask, volume, scan_dir)
            return
        except InputError as exc:
            note = f"DICOM outputs (--dicom-out) not written: {exc}"
    result.notes.append(note)
    payload["notes"].append(note)


def overlay_window(result: ScanResult, kept: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of the slices that the overlays show: the network's field of view (where its CAM is
    defined: 160 mm on the heart for the default network), grown by a margin to hold every kept lesion (``kept``:
    the boolean (Z, Y, X) mask of their voxels); the whole slice for a network without a field of view. One window
    for every slice of a scan, so the overlays page through as a stack."""
    ny, nx = np.shape(kept)[1:]
    window = result.candidates.field_window
    if window is None:
        return slice(0, ny), slice(0, nx)
    (r0, r1), (c0, c1) = window
    rows, cols = np.flatnonzero(kept.any(axis=(0, 2))), np.flatnonzero(kept.any(axis=(0, 1)))
    if rows.size:
        r0, r1 = min(r0, rows[0] - OVERLAY_MARGIN_PX), max(r1, rows[-1] + 1 + OVERLAY_MARGIN_PX)
        c0, c1 = min(c0, cols[0] - OVERLAY_MARGIN_PX), max(c1, cols[-1] + 1 + OVERLAY_MARGIN_PX)
    return slice(max(int(r0), 0), min(int(r1), ny)), slice(max(int(c0), 0), min(int(c1), nx))


def _write_overlays(result: ScanResult, volume: CTVolume, scan_dir: Path, kept_mask: np.ndarray,
                    shown: tuple[slice, slice]) -> list[str]:
    folder = scan_dir / SLICES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rejected = np.zeros(volume.shape, dtype=bool)
    flat = rejected.reshape(-1)
    for lesion, keep in zip(result.candidates, result.kept):
        if not keep and lesion.voxels is not None:
            flat[np.asarray(lesion.voxels)] = True
    window = tuple(result.model.get("hu_windows", [(-250.0, 950.0)])[0])  # the first (anatomy) window
    maps = result.cam_maps
    if maps is not None and result.model.get("cam_score") == "raw" and maps.size:
        top = float(maps.max())  # raw strength on one scale per scan: weak maps look weak
        maps = maps / top if top > 0 else maps

    rows, cols = shown

    def one(i: int, k: int) -> str:
        cam = maps[i][rows, cols] if maps is not None else None
        rgb = render_overlay(volume.hu[k][rows, cols], cam, kept_mask[k][rows, cols], rejected[k][rows, cols],
                             window)  # type: ignore[arg-type]
        name = f"{SLICES_DIR}/slice_{k:03d}.png"
        with atomic_path(scan_dir / name, make_parents=False) as tmp:
            tmp.write_bytes(_png_bytes(rgb))
        return name

    # PNG encoding (zlib) and numpy release the GIL: two threads overlap rendering and encoding.
    pool = None
    try:
        with sigint_held():  # every thread the pool starts is one it joins
            pool = ThreadPoolExecutor(max_workers=OVERLAY_THREADS)
            done = pool.map(one, range(len(result.cam_slices)), result.cam_slices)
        written = list(done)
    finally:  # on an interrupt, no thread may go on writing into a result folder that is being removed
        if pool is not None:
            uninterrupted(pool.shutdown, wait=True, cancel_futures=True)
    for old in folder.glob("slice_*.png"):  # overlays of an earlier run that this one has not rewritten
        if f"{SLICES_DIR}/{old.name}" not in written:
            old.unlink()
    return written


def summary_row(scan_id: str, status: str, *, reason: str = "", payload: dict[str, Any] | None = None,
                seconds: float = 0.0, source: str = "") -> dict[str, Any]:
    """One ``summary.csv`` row as a dict."""
    totals = (payload or {}).get("totals", {})
    per_artery = (payload or {}).get("per_artery") or {}
    arteries = {f"agatston_{a}": round(float(d["agatston"]), 3) for a, d in per_artery.items()}
    return {
        **{c: arteries.get(c, 0.0 if totals else "") for c in ARTERY_COLUMNS},
        "scan_id": scan_id,
        "status": status,
        "reason": reason,
        "agatston": "" if not totals else round(float(totals["agatston"]), 3),
        "volume_mm3": "" if not totals else round(float(totals["volume_mm3"]), 3),
        "mass_mg": "" if not totals else round(float(totals["mass_mg"]), 3),
        "category": (payload or {}).get("category", ""),
        "n_lesions": "" if not totals else int(totals["n_lesions"]),
        "seconds": round(float(seconds), 3),
        "source": source,
    }


def write_summary(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``summary.csv``: one row per scan (columns `SUMMARY_COLUMNS`)."""
    return write_csv(path, SUMMARY_COLUMNS, [[row.get(c, "") for c in SUMMARY_COLUMNS] for row in rows])


def _key_image(payload: dict[str, Any]) -> str | None:
    """The overlay of the slice with the highest kept Agatston, else of the most probable positive slice."""
    overlays = payload.get("files", {}).get("overlays", [])
    if not overlays:
        return None
    by_slice = {int(Path(p).stem.split("_")[-1]): p for p in overlays}
    lesions = [les for les in payload.get("lesions", []) if les["slice"] in by_slice]
    if lesions:
        return by_slice[max(lesions, key=lambda les: les["agatston"])["slice"]]
    probs = payload.get("slice_probabilities", [])
    return by_slice[max(by_slice, key=lambda k: probs[k] if k < len(probs) else 0.0)]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.error td{background:#fdecea}.small{font-size:.85em;color:#555}img{max-width:100%;border:1px solid #999}
.cat{font-weight:bold}caption{text-align:left;font-size:.85em;color:#555;caption-side:bottom}
"""


def _num(value: Any, digits: int = 1) -> str:
    if value in ("", None):
        return ""
    return f"{float(value):.{digits}f}"


def write_report(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    payloads: dict[str, dict[str, Any]],
    *,
    title: str = "Coronary artery calcium: inference report",
    run_info: dict[str, Any] | None = None,
    agreement: dict[str, Any] | None = None,
    embed_budget: int = EMBED_BUDGET_BYTES,
) -> Path:
    """One self-contained HTML page: the scans table, then per scan its totals, lesions and key image.

    Key images are embedded (base64) while the total stays under ``embed_budget`` bytes, linked beyond it.
    """
    path = Path(path)
    out = _report_head(title, rows, run_info)
    out.extend(_scans_table(rows))
    if agreement:
        out.append(_agreement_html(agreement))
    used = 0
    for r in rows:
        payload = payloads.get(str(r["scan_id"]))
        if r["status"] != "ok" or payload is None:
            continue
        section, used = _scan_section(str(r["scan_id"]), payload, path.parent, used, embed_budget)
        out.extend(section)
    out.append("</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out), encoding="utf-8")
    return path


def _report_head(title: str, rows: Sequence[dict[str, Any]], run_info: dict[str, Any] | None) -> list[str]:
    """The page's head, title, scan counts, run information and caveat."""
    esc = html.escape
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    info = dict(run_info or {})
    out.append(f"<p>{len(rows)} scan(s): {n_ok} scored, {len(rows) - n_ok} failed. "
               f"Written {esc(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'))}.</p>")
    if info:
        out.append("<table class='small'>" + "".join(
            f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in info.items()) + "</table>")
    out.append("<p class='small'>Research use only, not for clinical decisions. Agatston at 130 HU, 2D lesions per "
               "slice; risk category in the 5-class scheme (0 / 1-10 / 11-100 / 101-400 / &gt;400).</p>")
    return out


def _scans_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The table of every scan (one row each, linked to its section when scored)."""
    esc = html.escape
    out = ["<h2>Scans</h2><table><tr><th>scan</th><th>status</th><th>Agatston</th><th>category</th>"
           "<th>lesions</th><th>volume mm&sup3;</th><th>mass mg</th><th>seconds</th><th>reason</th></tr>"]
    for r in rows:
        sid = esc(str(r["scan_id"]))
        link = f"<a href='#scan-{sid}'>{sid}</a>" if r["status"] == "ok" else sid
        out.append(
            f"<tr class='{esc(r['status'])}'><td>{link}</td><td>{esc(r['status'])}</td>"
            f"<td class='num'>{_num(r['agatston'])}</td><td class='cat'>{esc(str(r['category']))}</td>"
            f"<td class='num'>{esc(str(r['n_lesions']))}</td><td class='num'>{_num(r['volume_mm3'])}</td>"
            f"<td class='num'>{_num(r['mass_mg'], 2)}</td><td class='num'>{_num(r['seconds'], 2)}</td>"
            f"<td>{esc(str(r['reason']))}</td></tr>")
    out.append("</table>")
    return out


def _scan_section(sid: str, payload: dict[str, Any], root: Path, used: int,
                  embed_budget: int) -> tuple[list[str], int]:
    """One scored scan's section and the embedded bytes so far (``used`` plus its key image, if embedded)."""
    esc = html.escape
    t = payload["totals"]
    out = [f"<h2 id='scan-{esc(sid)}'>{esc(sid)}</h2>"]
    out.append(f"<p>Agatston <b>{t['agatston']:.1f}</b> (category <b>{esc(payload['category'])}</b>), volume "
               f"{t['volume_mm3']:.1f} mm&sup3;, mass {t['mass_mg']:.2f} mg, {t['n_lesions']} lesion(s); "
               f"{len(payload['positive_slices'])} of {payload['n_slices']} slices positive. "
               f"<span class='small'>{esc(payload.get('source', ''))}</span></p>")
    cats = ", ".join(f"{esc(k)}: {esc(v)}" for k, v in payload["categories"].items())
    dicom = payload.get("files", {}).get("dicom") or {}
    extra = "".join(f", <a href='{esc(sid)}/{esc(d['file'])}'>{esc(d['file'])}</a>"
                    for d in (dicom.get("seg"), dicom.get("sr")) if d)
    out.append(f"<p class='small'>Categories: {cats}. Files: <a href='{esc(sid)}/{RESULT_FILE}'>result.json</a>, "
               f"<a href='{esc(sid)}/{LESION_MASK_FILE}'>lesions.nii.gz</a>{extra}.</p>")
    if payload["lesions"]:
        out.extend(_lesions_table(payload["lesions"]))
    key = _key_image(payload)
    if key is not None:
        figure, used = _key_image_html(sid, key, root, used, embed_budget)
        out.append(figure)
    others = payload.get("files", {}).get("overlays", [])
    if len(others) > 1:
        links = " ".join(f"<a href='{esc(sid)}/{esc(p)}'>{esc(Path(p).stem.split('_')[-1])}</a>" for p in others)
        out.append(f"<p class='small'>All positive slices: {links}</p>")
    if payload.get("notes"):
        out.append("<ul class='small'>" + "".join(f"<li>{esc(n)}</li>" for n in payload["notes"]) + "</ul>")
    return out, used


def _lesions_table(lesions: Sequence[dict[str, Any]]) -> list[str]:
    """The highest-scoring lesions (at most `REPORT_MAX_LESIONS`) as a table, with its caption."""
    esc = html.escape
    shown = sorted(lesions, key=lambda les: -les["agatston"])[:REPORT_MAX_LESIONS]
    more = len(lesions) - len(shown)
    title = f"The {len(shown)} highest-scoring of {len(lesions)} lesions (all in result.json)" if more else "Lesions"
    out = [f"<p class='small'>{title}:</p>"]
    out.append("<table class='small'><tr><th>id</th><th>slice</th><th>position LPS mm</th><th>area mm&sup2;"
               "</th><th>peak HU</th><th>P(slice)</th><th>CAM</th><th>Agatston</th><th>artery</th></tr>")
    for les in shown:
        pos = ", ".join(f"{v:.1f}" for v in les["centroid_lps_mm"])
        out.append(f"<tr><td>{les['id']}</td><td>{les['slice']}</td><td>{pos}</td>"
                   f"<td class='num'>{les['area_mm2']:.2f}</td><td class='num'>{les['peak_hu']:.0f}</td>"
                   f"<td class='num'>{les['slice_probability']:.3f}</td>"
                   f"<td class='num'>{_num(les['cam_score'], 3)}</td>"
                   f"<td class='num'>{les['agatston']:.2f}</td><td>{esc(les['artery'])}</td></tr>")
    out.append("</table>")
    return out


def _key_image_html(sid: str, key: str, root: Path, used: int, embed_budget: int) -> tuple[str, int]:
    """The key image's figure: embedded while the page's images stay within ``embed_budget``, else linked."""
    esc = html.escape
    png = root / sid / key
    caption = f"{esc(sid)}, {esc(key)} (left: kept lesions in green, rejected candidates in orange; right: CAM)"
    data = png.read_bytes() if png.is_file() else b""
    if data and used + len(data) <= embed_budget:
        used += len(data)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    else:
        src = f"{esc(sid)}/{esc(key)}"
    return (f"<figure><img src='{src}' alt='{caption}'><figcaption class='small'>{caption}</figcaption>"
            "</figure>"), used


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _agreement_html(a: dict[str, Any]) -> str:
    """The agreement section: the headline table with 95 % intervals, correlations, Bland-Altman, lesion counts,
    the per-artery table when the references have arteries, and non-coronary calcium counted as coronary."""
    parts = [f"<h2>Agreement with the reference ({a.get('n_scans', 0)} scans)</h2>", agreement_table(a, "html")]
    s = a.get("scores")
    if s:
        ba = s["bland_altman"]
        parts.append(f"<p>Pearson {_fmt(s['pearson'])}, Spearman {_fmt(s['spearman'])}; Bland-Altman bias "
                     f"{_fmt(ba['bias'], 1)} (limits {_fmt(ba['lower'], 1)} .. {_fmt(ba['upper'], 1)}).</p>")
    lesions = a.get("lesions")
    if lesions:
        parts.append(f"<p>Lesions: sensitivity {_fmt(lesions['sensitivity'])}, PPV {_fmt(lesions['ppv'])}; "
                     f"{_fmt(lesions['false_positives_per_scan'], 2)} false-positive lesions per scan.</p>")
    if a.get("per_artery"):
        parts.append("<h3>Per artery</h3>" + artery_table(a, "html"))
    nc = a.get("non_coronary_counted_as_coronary")
    if nc:
        parts.append(f"<p>Kept lesions on aortic / valve reference voxels: {nc['lesions']} "
                     f"(Agatston {nc['agatston']:.1f}).</p>")
    parts.append(f"<p class='small'>Details: <a href='{AGREEMENT_FILE}'>{AGREEMENT_FILE}</a>.</p>")
    return "".join(parts)


def write_error_result(scan_dir: str | Path, scan_id: str, reason: str, source: str) -> Path:
    """``result.json`` of a scan that could not be processed."""
    return write_json(Path(scan_dir) / RESULT_FILE, {
        "scan_id": scan_id, "status": "error", "reason": reason, "source": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {"coronary_calcium": __version__},
    })


def write_agreement(path: str | Path, agreement: dict[str, Any]) -> Path:
    return write_json(path, agreement)
