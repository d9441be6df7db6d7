"""Atomic writes: a result file or folder is either whole or absent, never half-written."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from coronary_calcium.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed.
    ``make_parents=False``: a missing folder is an error (a writer must not bring back a folder being removed)."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_output_folder(path: str | Path) -> None:
    """Refuse an output folder that cannot be made or written: an existing file, a path under a file, a folder
    where no file can be created (read-only). Checked before any work, not after it."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(existing, f"is a file, not a folder: {path} cannot be created under it")
    try:  # a real probe: permission bits say nothing for root, and read-only mounts / immutable folders exist
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise InputError(existing, f"cannot write in this folder ({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, replace: bool = False, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path`` to write a result into; on success its content goes into place,
    on a failure or an interrupt it is removed: ``path`` never holds a partial result.

    A missing ``path`` is the temporary folder renamed (atomic). An existing one is replaced as a whole
    (``replace=True``) or gets each entry of the temporary folder in place of its own entry of that name, the
    names in ``last`` moved last (a run summary appears only once what it lists is there).
    """
    path = Path(path).absolute()
    check_output_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()  # not mkdtemp: its mode 0700 would stay on the renamed result
    except OSError as e:
        raise InputError(path.parent, f"cannot create a temporary folder beside {path.name} here "
                         f"({e.strerror or e})") from None
    try:
        yield tmp
        _move_into_place(tmp, path, replace, last)
    except OSError as e:  # name the result's path, not the temporary one (a full disk while writing)
        name = e.filename if isinstance(e.filename, str) else None
        if name is None or not Path(name).is_relative_to(tmp):
            raise
        raise OSError(e.errno, e.strerror, str(path / Path(name).relative_to(tmp))) from e
    finally:  # gone already when renamed into place; removed even when Ctrl-C lands in the clean-up
        uninterrupted(shutil.rmtree, tmp, ignore_errors=True)


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back while the block runs, then deliver it: for a step that must not be cut half way,
    such as a thread pool starting its threads (a thread started but not yet registered would escape the pool's
    shutdown and go on writing into a result folder being removed). Python runs signal handlers in the main thread
    only, so elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # as the restored handler would have had it


def uninterrupted(cleanup: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``cleanup`` to its end even when Ctrl-C lands inside it (Python raises KeyboardInterrupt at any bytecode,
    also in a finally block), then raise the interrupt."""
    interrupted: BaseException | None = None
    while True:
        try:
            cleanup(*args, **kwargs)
            break
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted


def _move_into_place(tmp: Path, path: Path, replace: bool, last: Sequence[str]) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    if replace:
        old = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    trash = tmp / f".replaced-{secrets.token_hex(4)}"
    trash.mkdir()
    entries = sorted((e for e in tmp.iterdir() if e != trash), key=lambda e: (e.name in last, e.name))
    for entry in entries:
        target = path / entry.name
        if target.exists() or target.is_symlink():
            os.rename(target, trash / entry.name)
        os.rename(entry, target)


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
