"""Atomic file writes: a result is either whole or absent, never half-written."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, value: Any, compact: Sequence[str] = ()) -> Path:
    """Write JSON (indent 2) atomically; the top-level keys in ``compact`` go last, each on one compact line
    (long arrays a reader skips, e.g. a tree ensemble)."""
    if compact:
        if not isinstance(value, dict):
            raise TypeError("compact keys need a JSON object")
        head = {k: v for k, v in value.items() if k not in compact}
        lines = [json.dumps(head, indent=2, default=_jsonable).rstrip()[:-1].rstrip()]
        for k in (k for k in compact if k in value):
            sep = "," if head or lines[1:] else ""
            lines.append(f"{sep}\n  {json.dumps(k)}: "
                         + json.dumps(value[k], separators=(",", ":"), default=_jsonable))
        text = "".join(lines) + "\n}\n"
    else:
        text = json.dumps(value, indent=2, default=_jsonable) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return Path(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
