"""A real interrupt: the command line, run as a user runs it, gets SIGINT once it has started writing results; the
output folder must not appear (or keep its earlier content), with no temporary folder left beside it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coronary_calcium.cli import main
from coronary_calcium.report.files import sigint_held
from coronary_calcium.synth.config import SynthConfig


def _as_from_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN (no
    # KeyboardInterrupt): give the command the default disposition it has when run from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "coronary_calcium.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_as_from_a_terminal)


def _interrupt_when(proc: subprocess.Popen, out: Path, pattern: str, timeout: float = 180.0) -> tuple[int, str]:
    """Send SIGINT once a file matching ``pattern`` exists in a temporary folder beside ``out``; return the exit
    status and stderr."""
    deadline = time.monotonic() + timeout
    while not list(out.parent.glob(f".{out.name}.tmp-*/{pattern}")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the command ended (or stalled) before it wrote {pattern}: {proc.returncode}\n{err[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture
def many_scans(tiny_manifest, tmp_path) -> Path:
    """A folder of 40 tiny NIfTI scans: scoring them takes long enough to be interrupted half way."""
    folder = tmp_path / "scans"
    folder.mkdir()
    images = sorted(tiny_manifest.parent.glob("T*/image.nii.gz"))
    for i in range(40):
        shutil.copy2(images[i % len(images)], folder / f"scan{i:02d}.nii.gz")
    return folder


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_sigint_during_infer_leaves_no_partial_result(many_scans, hostile_ckpt, tmp_path):
    out = tmp_path / "result"
    proc = _start(["infer", str(many_scans), "--out", str(out), "--ckpt-dir", str(hostile_ckpt)])
    status, err = _interrupt_when(proc, out, "scan00/lesions.nii.gz")
    assert status == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    assert not out.exists()
    assert not list(tmp_path.glob(".result.*")), [p.name for p in tmp_path.rglob("*") if ".result." in str(p)]


def test_interrupt_keeps_earlier_results_whole(many_scans, hostile_ckpt, tmp_path, monkeypatch, capsys):
    """In process (a subprocess costs seconds of imports): Ctrl-C after the second scan's outputs are written, with
    --overwrite over an earlier run's results: they stay as they were."""
    import coronary_calcium.inference.batch as batch

    out = tmp_path / "result"
    (out / "scan00").mkdir(parents=True)
    (out / "scan00" / "result.json").write_text('{"status": "ok", "earlier": true}')
    (out / "summary.csv").write_text("scan_id,status\nscan00,ok\n")
    before = _tree(out)
    written = []

    def write_then_interrupt(*args, **kwargs):
        written.append(batch_write(*args, **kwargs))
        if len(written) == 2:
            raise KeyboardInterrupt
        return written[-1]

    batch_write = batch.write_scan_outputs
    monkeypatch.setattr(batch, "write_scan_outputs", write_then_interrupt)
    assert main(["infer", str(many_scans), "--out", str(out), "--ckpt-dir", str(hostile_ckpt), "--overwrite"]) == 130
    assert len(written) == 2 and "interrupted" in capsys.readouterr().err
    assert _tree(out) == before
    assert not list(tmp_path.glob(".result.*"))


def test_sigint_during_synth_leaves_no_partial_set(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**SynthConfig(matrix=256, n_slices=(16, 16)).to_dict(), "n_patients": 6}))
    out = tmp_path / "set"
    proc = _start(["synth", "--out", str(out), "--config", str(config), "--workers", "1"])
    status, err = _interrupt_when(proc, out, "SYN0000/truth.json")
    assert status == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".set.*"))


def test_ctrl_c_held_back_by_sigint_held_arrives_after_the_block():
    """What the overlay writer starts its thread pool under: a Ctrl-C inside the block does not cut it, and is
    raised once the block has run."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell job ignores SIGINT
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigint_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                finished.append("block")
            time.sleep(0.05)
            finished.append("after")  # not reached: the held Ctrl-C is raised as the block ends
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished == ["block"]
