"""The experiment report (:func:`coronary_calcium.experiment.run_experiment`) as Markdown and self-contained HTML.

Both files are rendered from one list of blocks (headings, paragraphs, tables, images, code), so they hold the same
content: the Markdown links images relative to the experiment folder, the HTML embeds them (base64 PNG) and opens
anywhere on its own. ``experiment.json`` beside them holds the summary the report was rendered from.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coronary_calcium.report.files import atomic_path, write_json

__all__ = ["write_experiment_report", "render_markdown", "render_html", "report_blocks"]

_METRICS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1", "roc_auc": "ROC AUC"}
_NA = "n/a"

Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", path, alt) | ("code", text)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return _NA
    return f"{value:.{digits}f}"


def _with(value: Any, other: Any, label: str) -> str:
    """``0.812 (chance 0.031)``; n/a parts left out."""
    text = _num(value)
    return text if text == _NA or _num(other) == _NA else f"{text} ({label} {_num(other)})"


def _settings_text(run: Mapping[str, Any]) -> str:
    res = run.get("resolved") or {}
    st = run.get("settings") or {}

    def get(key: str) -> Any:
        return res.get(key, st.get(key))

    size = get("image_size")
    parts = [
        f"image size {size[0]} x {size[1]} px" if isinstance(size, (list, tuple)) and len(size) == 2 else None,
        f"batch {get('batch_size')}" if get("batch_size") is not None else None,
        f"{get('max_epochs')} epoch(s)" if get("max_epochs") is not None else None,
        f"trained {res['epochs_trained']}" if "epochs_trained" in res else None,
        f"precision {get('precision')}" if get("precision") is not None else None,
        f"channels_last {get('channels_last')}" if get("channels_last") is not None else None,
        f"device {res['device']}" if "device" in res else None,
        f"learning rate {res['learning_rate']}" if "learning_rate" in res else None,
        f"balance {res['balance']}" if "balance" in res else None,
        (
            f"{res['train_slices']} training slices ({res['train_samples_per_epoch']} samples per epoch)"
            if "train_slices" in res and "train_samples_per_epoch" in res
            else None
        ),
        f"{res['validation_slices']} validation slices" if "validation_slices" in res else None,
        f"ImageNet weights {st['pretrained_weights']}" if st.get("pretrained_weights") else None,
    ]
    return "; ".join(p for p in parts if p)


def _seconds_text(seconds: Mapping[str, float] | None) -> str:
    if not seconds:
        return ""
    parts = [f"{k} {v / 60:.1f} min" if v >= 120 else f"{k} {v:.0f} s" for k, v in seconds.items()]
    return "time: " + ", ".join(parts)


def _status_text(run: Mapping[str, Any]) -> str:
    if run["status"] == "ok":
        return "ok"
    reason = run.get("reason") or run["status"]
    return reason if reason.startswith(run["status"]) else f"{run['status']}: {reason}"


def _results_table(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["Model", "Source", *(_METRICS.values()), "Test slices / status"]
    paper = summary.get("paper", {}).get("results", {})
    rows: list[list[str]] = []
    for run in summary.get("runs", []):
        m = run.get("metrics") or {}
        if run["status"] == "ok":
            rows.append([run["network"], "this run", *(_num(m.get(k)) for k in _METRICS), str(m.get("n", _NA))])
        else:
            rows.append([run["network"], "this run", *([_NA] * len(_METRICS)), _status_text(run)])
        p = paper.get(run["network"], {})
        rows.append(["", "paper (its own data)", *(_num(p.get(k), 2) for k in _METRICS), ""])
    why = "not run: the experiment stopped before it" if summary.get("finished") else "pending (running)"
    for name in summary.get("pending", []) or []:
        rows.append([name, "this run", *([_NA] * len(_METRICS)), why])
    return headers, rows


def _localization_table(loc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "Layer",
        "Positive slices",
        "Pointing game 0 mm",
        "Pointing game 3 mm",
        "Pointing game 3 mm among calcium",
        "EBPG",
        "Otsu IoU",
        "Otsu Dice",
        "AUPRC",
        "Peak AUC",
        "Sanity rho",
    ]
    rows = []
    best = loc.get("best_layer")
    for layer, m in (loc.get("layers") or {}).items():
        pg = m.get("pointing_game") or {}
        pgc = (m.get("pointing_game_calcium") or {}).get("3mm") or {}
        ebpg = m.get("energy_pointing_game") or {}
        auprc = m.get("auprc") or {}
        otsu = m.get("otsu") or {}
        sanity = m.get("sanity") or {}
        rows.append(
            [
                f"{layer} (best)" if layer == best else layer,
                str(m.get("n_positive_slices", _NA)),
                _with((pg.get("0mm") or {}).get("hit_rate"), (pg.get("0mm") or {}).get("chance"), "chance"),
                _with((pg.get("3mm") or {}).get("hit_rate"), (pg.get("3mm") or {}).get("chance"), "chance"),
                _with(pgc.get("hit_rate"), pgc.get("chance"), "chance"),
                _with(ebpg.get("mean"), ebpg.get("lift"), "lift"),
                _num(otsu.get("iou")),
                _num(otsu.get("dice")),
                _with(auprc.get("mean"), auprc.get("baseline"), "baseline"),
                _num((m.get("peak") or {}).get("auc")),
                _num(sanity.get("rho_final")),
            ]
        )
    return headers, rows


def _rel(path: str | os.PathLike, root: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).as_posix()


def report_blocks(summary: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Block]:
    """The report's content as blocks; image paths are relative to ``out_dir``."""
    root = Path(out_dir)
    runs = summary.get("runs", [])
    b: list[Block] = _heading_blocks(summary)
    b += _results_blocks(summary)
    for run in runs:
        b += _run_blocks(run, root)
    b += _machine_blocks(summary.get("machine", {}))
    b += _reproduce_blocks(summary, runs)
    return b


def _heading_blocks(summary: Mapping[str, Any]) -> list[Block]:
    """Title, dates, the paper, the profile and the data set."""
    prof = summary.get("profile", {})
    man = summary.get("manifest", {})
    b: list[Block] = [("h", 1, summary.get("title", "Experiment report"))]
    done = "finished " + summary["finished"] if summary.get("finished") else "in progress (rewritten after each model)"
    secs = summary.get("seconds")
    b.append(
        (
            "p",
            f"Date: started {summary.get('started')}, {done}"
            + (f"; {secs / 60:.1f} min in all." if isinstance(secs, (int, float)) else "."),
        )
    )
    b.append(("p", f"Reproduces: {summary.get('paper', {}).get('citation', '')}."))
    b.append(("p", f"Profile: {prof.get('name')}. {prof.get('description', '')}"))
    if prof.get("overrides"):
        b.append(
            (
                "p",
                "Extra bundle overrides for every model: "
                + ", ".join(f"{k}={v}" for k, v in prof["overrides"].items()),
            )
        )
    b.append(
        (
            "p",
            f"Data: {man.get('path')}"
            + (f" ({man['name']})" if man.get("name") else "")
            + (f". {man['description']}" if man.get("description") else ""),
        )
    )
    return b


def _results_blocks(summary: Mapping[str, Any]) -> list[Block]:
    """The test-split results table with the note on the paper's rows."""
    headers, rows = _results_table(summary)
    return [
        ("h", 2, "Results on the test split"),
        ("table", headers, rows),
        (
            "p",
            "Slice-level metrics of the positive class (calcium) at probability 0.5, from each model's "
            "eval/test_metrics.json. The rows labelled 'paper' hold only the numbers the paper states, for its best "
            "configuration (Inception v3 trained from scratch: 97 % accuracy, 0.96 precision), measured on the "
            "paper's own CT data, not on this data set; every other paper cell is n/a. A fine-tuned model without "
            "a local ImageNet weights file is not run rather than trained from scratch under its name.",
        ),
    ]


def _run_blocks(run: Mapping[str, Any], root: Path) -> list[Block]:
    """One configuration's section: status, settings, time, figures and CAM localization."""
    name = run["network"]
    b: list[Block] = [("h", 2, name), ("p", run.get("description", "")), ("p", "Status: " + _status_text(run))]
    text = _settings_text(run)
    if text:
        b.append(("p", "Settings: " + text + "."))
    if run.get("seconds"):
        b.append(("p", _seconds_text(run["seconds"]).capitalize() + "."))
    files = run.get("files") or {}
    for key, title in (
        ("training_curves", "Training curves"),
        ("confusion_matrix", "Confusion matrix (test)"),
        ("cam_montage", "Grad-CAM layer montage (rows: layers, shallow to deep)"),
    ):
        if key in files:
            b.append(("h", 3, title))
            b.append(("img", _rel(files[key], root), f"{name}: {title}"))
    loc = run.get("localization")
    if loc:
        b += _localization_blocks(loc)
    elif run["status"] == "ok":
        b.append(("p", "No eval/localization.json was written."))
    return b


def _localization_blocks(loc: Mapping[str, Any]) -> list[Block]:
    """The CAM localization table of one configuration with what its columns mean."""
    headers, rows = _localization_table(loc)
    return [
        ("h", 3, "CAM localization per layer (test split)"),
        ("table", headers, rows),
        (
            "p",
            f"{loc.get('method', 'CAM')} of the calcium class on {loc.get('n_positive', _NA)} positive "
            f"({loc.get('n_positive_with_mask', _NA)} with a mask) and {loc.get('n_negative', _NA)} negative "
            "slices. Pointing game: the map's peak within the calcium mask (dilated by 0 / 3 mm), with its "
            "chance rate; among calcium: the peak looked for among the pixels >= the calcium threshold only "
            "(bone, aortic and valve calcium included), with the share of those pixels near the mask as "
            "chance; EBPG: share of the map's energy inside the mask, with its lift over chance; Otsu "
            "IoU/Dice of the thresholded map; AUPRC of the map against the mask with the pixel baseline; "
            "peak AUC: the raw map peak separating positive from negative slices; sanity rho: rank "
            "correlation with the maps after randomising the weights (near 0 is good). Best layer by "
            f"{loc.get('best_layer_by', 'the 3 mm pointing game')}.",
        ),
    ]


def _machine_blocks(m: Mapping[str, Any]) -> list[Block]:
    """The machine the experiment ran on, as a table."""
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())
    return [
        ("h", 2, "Machine"),
        (
            "table",
            ["Item", "Value"],
            [
                ["Platform", str(m.get("platform"))],
                ["Python", str(m.get("python"))],
                [
                    "CPU",
                    f"{m.get('cpu')} ({m.get('cpus_usable')} of {m.get('cpu_count')} cores usable; bf16: "
                    f"{m.get('cpu_bf16')})",
                ],
                ["Torch threads", str(m.get("torch_threads"))],
                ["GPU", str(m.get("gpu"))],
                ["Libraries", versions],
            ],
        ),
    ]


def _reproduce_blocks(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[Block]:
    """The commands that rerun the whole experiment and each model by hand."""
    b: list[Block] = [
        ("h", 2, "Reproduce"),
        ("p", "The whole experiment (from the repository root; ImageNet weights only as local files):"),
        ("code", summary.get("command", "")),
        (
            "p",
            "One model by hand, with the package CLI or MONAI's bundle CLI (set --output_dir to choose where "
            "it writes):",
        ),
    ]
    lines = []
    for run in runs:
        c = run.get("commands") or {}
        if c:
            lines += [f"# {run['network']}", c["train"], c["evaluate"], c["monai_train"], c["monai_evaluate"], ""]
    if lines:
        b.append(("code", "\n".join(lines).rstrip()))
    return b


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    """Markdown of the blocks (images linked by their relative path)."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            headers, rows = block[1], block[2]
            out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            out.append("|" + "|".join("---" for _ in headers) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
        elif kind == "code":
            out.append("```bash\n" + block[1] + "\n```")
        out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _img_src(rel: str, root: Path) -> str:
    path = root / rel
    try:
        data = path.read_bytes()
    except OSError:
        return html.escape(rel, quote=True)  # not found: leave the relative link
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def render_html(blocks: Sequence[Block], out_dir: str | os.PathLike, title: str = "Experiment report") -> str:
    """Self-contained HTML of the blocks: images embedded as base64 data URIs."""
    root = Path(out_dir)
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{esc(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{esc(str(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(
                f'<figure><img src="{_img_src(block[1], root)}" alt="{esc(block[2], quote=True)}">'
                f"<figcaption>{esc(block[1])}</figcaption></figure>"
            )
        elif kind == "code":
            body.append(f"<pre><code>{esc(block[1])}</code></pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_experiment_report(summary: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write report.md, report.html and experiment.json into ``out_dir`` (atomically); return the two reports."""
    out = Path(out_dir)
    blocks = report_blocks(summary, out)
    md, page = out / "report.md", out / "report.html"
    with atomic_path(md) as tmp:
        tmp.write_text(render_markdown(blocks), encoding="utf-8")
    with atomic_path(page) as tmp:
        tmp.write_text(render_html(blocks, out, summary.get("title", "Experiment report")), encoding="utf-8")
    write_json(out / "experiment.json", summary)
    return md, page
