"""CAMPanelHandler on a real ignite Engine, read back with TensorBoard's own event reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from coronary_calcium.errors import InputError
from coronary_calcium.explain.handlers import CAMPanelHandler, overlay


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _panel(n_pos: int = 2, n_neg: int = 2) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n_pos + n_neg):
        mask = np.zeros((1, 32, 32), np.float32)
        image = rng.normal(0, 50, (1, 32, 32)).astype(np.float32)
        if i < n_pos:
            mask[0, 10 + i : 14 + i, 12:16] = 1
            image[mask > 0] += 400
        items.append({"image": torch.as_tensor(image), "label": int(i < n_pos), "mask": mask, "name": f"s{i}"})
    return items


def _read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_handler_writes_images_and_scalars(tmp_path) -> None:
    model = _net()
    model.train()
    evaluator = Engine(lambda engine, batch: None)
    handler = CAMPanelHandler(
        network=model,
        layers=["1", "3"],
        panel=_panel(),
        log_dir=str(tmp_path),
        window=(-100, 300),
        global_step_transform=lambda epoch: epoch * 10,
    )
    handler.attach(evaluator)
    evaluator.run([0, 1], max_epochs=2)
    handler.close()

    acc = _read(tmp_path)
    tags = acc.Tags()
    for layer in ("1", "3"):
        assert f"cam/{layer}" in tags["images"]
        for name in ("peak_pos", "peak_neg", "hit_rate", "ebpg"):
            assert f"cam/{layer}/{name}" in tags["scalars"]
        events = acc.Images(f"cam/{layer}")
        assert [e.step for e in events] == [10, 20]
        # 4 tiles of 32 px in one row, 2 px padding
        assert (events[0].height, events[0].width) == (36, 4 * 34 + 2)
        peaks = acc.Scalars(f"cam/{layer}/peak_pos")
        assert [e.step for e in peaks] == [10, 20]
    # model state left as it was: mode, no grads, hooks only on the handler's two layers
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_handler_dataset_indices_and_shared_writer(tmp_path) -> None:
    model = _net()
    writer = SummaryWriter(log_dir=str(tmp_path))
    handler = CAMPanelHandler(
        network=model,
        layers=["3"],
        dataset=_panel(1, 3),
        indices=[0, 2],
        summary_writer=writer,
        method="layercam",
        tag_prefix="val_cam",
        scale="slice",
    )
    evaluator = Engine(lambda engine, batch: None)
    handler.attach(evaluator)
    with torch.no_grad():  # the handler must cope with an evaluator's no_grad context
        evaluator.run([0], max_epochs=1)
    cam = handler._cam
    evaluator.run([0], max_epochs=1)  # a fresh run: same CAM object, hooks not re-registered
    assert handler._cam is cam
    assert len(model[3]._forward_hooks) == 1
    writer.close()
    tags = _read(tmp_path).Tags()
    assert "val_cam/3" in tags["images"]
    assert "val_cam/3/peak_pos" in tags["scalars"] and "val_cam/3/peak_neg" in tags["scalars"]
    handler.close()
    assert len(model[3]._forward_hooks) == 0


def test_handler_bad_config() -> None:
    with pytest.raises(InputError):
        CAMPanelHandler(network=_net(), layers=["3"])
    with pytest.raises(InputError):
        CAMPanelHandler(network=_net(), layers=["3"], panel=_panel(), method="nope")
    handler = CAMPanelHandler(network=_net(), layers=["99"], panel=_panel(), log_dir="unused")
    with pytest.raises(InputError):
        handler(Engine(lambda e, b: None))


def test_overlay_colours() -> None:
    image = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    mask = np.zeros((16, 16))
    mask[4:8, 4:8] = 1
    rgb = overlay(image, np.zeros((16, 16)), mask)
    assert rgb.shape == (16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert tuple(rgb[4, 4]) == (0.0, 1.0, 0.0)  # contour pixel
    assert rgb[5, 5, 0] == rgb[5, 5, 1] == rgb[5, 5, 2]  # interior: gray, zero heat leaves it untouched
    hot = overlay(image, np.ones((16, 16)), None, alpha=1.0)
    assert not np.allclose(hot[..., 0], hot[..., 1])
