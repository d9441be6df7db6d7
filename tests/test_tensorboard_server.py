"""TensorBoard as users see it: a real `tensorboard` server on a tiny trained run serves the run, the training and
validation scalars and the Grad-CAM images through its HTTP data API (loopback only, bounded waits)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from coronary_calcium.train.bundle import run_bundle

SCALARS = {"train_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_roc_auc", "learning_rate"}
IMAGES = {"cam/layer2", "cam/layer3"}  # tiny_cnn's CAM layers
WAIT_S = 60
# Never through a proxy: the server listens on the loopback interface only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **params: str) -> bytes:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with _OPENER.open(url, timeout=10) as resp:
        return resp.read()


def _get_json(base: str, path: str, **params: str):
    return json.loads(_get(base, path, **params))


def _wait_for(what: str, probe, server: subprocess.Popen, deadline: float):
    """Call ``probe`` until it returns a truthy value; fail at the deadline or when the server exits."""
    last = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tensorboard exited with status {server.returncode} while waiting for {what}")
        try:
            value = probe()
            if value:
                return value
            last = value
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as e:
            last = e
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not serve {what} within {WAIT_S} s (last: {last!r})")


@pytest.fixture(scope="module")
def logdir(tiny_manifest, tmp_path_factory, tiny_bundle) -> Path:
    """Like `tensorboard --logdir bundle/runs`: one folder per network, its events in <network>/tensorboard."""
    runs = tmp_path_factory.mktemp("runs")
    run_bundle(
        ["train"],
        {
            "manifest": str(tiny_manifest),
            "output_dir": str(runs / "tiny_cnn"),
            "slice_cache_dir": str(runs.parent / "tb_cache"),
            "max_epochs": 2,
            **tiny_bundle,
        },
    )
    return runs


def test_tensorboard_serves_scalars_and_cam_images(logdir, tmp_path):
    exe = Path(sys.executable).parent / "tensorboard"
    assert exe.is_file(), f"{exe}: tensorboard is not installed in the environment"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "tensorboard.log", "w")
    server = subprocess.Popen(
        [str(exe), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + WAIT_S
        run = "tiny_cnn/tensorboard"
        runs = _wait_for(
            "the run", lambda: run in _get_json(base, "/data/runs") and _get_json(base, "/data/runs"), server, deadline
        )
        assert runs == [run]

        def scalar_tags():
            tags = _get_json(base, "/data/plugin/scalars/tags").get(run, {})
            return tags if SCALARS <= set(tags) else None

        tags = _wait_for("the scalar tags", scalar_tags, server, deadline)
        assert {"train_accuracy", "val_loss"} <= set(tags)
        points = _get_json(base, "/data/plugin/scalars/scalars", run=run, tag="val_accuracy")
        assert [p[1] for p in points] == [1, 2] and all(0.0 <= p[2] <= 1.0 for p in points)
        assert [p[1] for p in _get_json(base, "/data/plugin/scalars/scalars", run=run, tag="learning_rate")] == [1, 2]

        def image_tags():
            found = _get_json(base, "/data/plugin/images/tags").get(run, {})
            return found if IMAGES <= set(found) else None

        _wait_for("the CAM image tags", image_tags, server, deadline)
        for tag in sorted(IMAGES):
            entries = _get_json(base, "/data/plugin/images/images", run=run, tag=tag)
            assert [e["step"] for e in entries] == [1, 2], tag
            png = _get(base, "/data/plugin/images/individualImage?" + entries[-1]["query"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n", tag
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its data-server child: the group started here
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        server.wait(timeout=15)
        log.close()
