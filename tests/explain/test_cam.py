"""CAM correctness on tiny networks: against hand-computed Grad-CAM, batching, hooks, modes, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coronary_calcium.errors import InputError
from coronary_calcium.explain.cam import CAM, layer_stride, valid_layer_names


class TinyNet(nn.Module):
    def __init__(self, in_chans: int = 1, inplace: bool = False, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.features = nn.Sequential(
            conv(in_chans, 4, 3, padding=1),
            nn.ReLU(),
            conv(4, 8, 3, stride=2, padding=1),
            nn.ReLU(inplace=inplace),
            conv(8, 8, 3, padding=1),
            nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 2)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(a).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _model(seed: int = 0, **kw) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kw)


def _manual_gradcam(model: TinyNet, x: torch.Tensor, cls: torch.Tensor, upto: int) -> torch.Tensor:
    """Grad-CAM by the formula, on the output of features[upto]: w = mean of grads, map = relu(sum_k w_k A_k)."""
    model.eval()
    with torch.enable_grad():
        a = model.features[: upto + 1](x)
        # Clone before the rest: the in-place ReLU variant would otherwise overwrite ``a``.
        logits = model.head(model.features[upto + 1 :](a.clone()))
        (g,) = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), a)
    w = g.mean(dim=(2, 3), keepdim=True)
    return torch.relu((w * a).sum(1, keepdim=True)).detach()


@pytest.mark.parametrize("layer, upto", [("features.5", 5), ("features.4", 4), ("features.2", 2)])
@pytest.mark.parametrize("inplace", [False, True])
def test_gradcam_matches_formula(layer: str, upto: int, inplace: bool) -> None:
    model = _model(inplace=inplace)
    x = torch.randn(3, 1, 32, 32)
    cls = torch.tensor([0, 1, 1])
    with CAM(model, [layer]) as cam:
        res = cam(x, cls)[layer]
    ref = _manual_gradcam(model, x, cls, upto)
    assert res.raw.shape == ref.shape
    torch.testing.assert_close(res.raw, ref, rtol=1e-5, atol=1e-6)
    assert res.upsampled.shape == (3, 1, 32, 32)
    torch.testing.assert_close(res.peak, ref.flatten(1).amax(1))
    assert res.class_idx.tolist() == [0, 1, 1]


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_mixed_class_batch_equals_per_sample(method: str) -> None:
    model = _model()
    x = torch.randn(4, 1, 32, 32)
    cls = torch.tensor([0, 1, 0, 1])
    with CAM(model, ["features.2", "features.5"], method) as cam:
        batch = cam(x, cls)
        for i in range(4):
            single = cam(x[i : i + 1], int(cls[i]))
            for layer in batch:
                torch.testing.assert_close(batch[layer].raw[i : i + 1], single[layer].raw, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(batch[layer].normalised[i : i + 1], single[layer].normalised)


def test_default_class_is_prediction_and_int_class() -> None:
    model = _model()
    x = torch.randn(4, 1, 32, 32)
    with CAM(model, ["features.5"]) as cam:
        res = cam(x)["features.5"]
        assert res.class_idx.tolist() == res.logits.argmax(1).tolist()
        assert cam(x, 1)["features.5"].class_idx.tolist() == [1] * 4
        with pytest.raises(InputError):
            cam(x, 2)
        with pytest.raises(InputError):
            cam(x, torch.tensor([0, 1]))


def test_no_grads_left_mode_restored_and_no_grad_context() -> None:
    model = _model()
    model.train()
    model.fc.eval()  # a deliberately mixed mode must come back exactly
    sentinel = torch.full_like(model.fc.weight, 7.0)
    model.fc.weight.grad = sentinel.clone()
    x = torch.randn(2, 1, 32, 32)
    with CAM(model, ["features.5"]) as cam, torch.no_grad():
        res = cam(x)
    assert res["features.5"].raw.abs().sum() > 0
    assert model.training and not model.fc.training and model.features.training
    for name, p in model.named_parameters():
        if name == "fc.weight":
            assert torch.equal(p.grad, sentinel)
        else:
            assert p.grad is None, name
    with torch.inference_mode(), CAM(model, ["features.5"]) as cam:
        assert cam(x)["features.5"].raw.shape == (2, 1, 16, 16)


def test_eval_mode_used_during_cam() -> None:
    # Dropout in train mode would make repeated CAMs differ; CAM runs the model in eval mode.
    model = _model()
    model.train()
    x = torch.randn(2, 1, 32, 32)
    with CAM(model, ["features.5"]) as cam:
        a, b = cam(x, 1), cam(x, 1)
    torch.testing.assert_close(a["features.5"].raw, b["features.5"].raw)


def test_frozen_parameters_still_work() -> None:
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    with CAM(model, ["features.5"]) as cam:
        assert cam(torch.randn(2, 1, 32, 32), 1)["features.5"].raw.abs().sum() > 0


def test_wrong_layer_lists_valid_names() -> None:
    model = _model()
    with pytest.raises(InputError) as err:
        CAM(model, ["features.9"])
    msg = str(err.value)
    assert "features.9" in msg and "features.5" in msg and "fc" in msg
    names = valid_layer_names(model)
    assert "" not in names and "features.0" in names


def test_dataparallel_prefix() -> None:
    model = _model()
    wrapped = nn.DataParallel(model)  # CPU-only: behaves as a plain wrapper
    x = torch.randn(2, 1, 32, 32)
    with CAM(model, ["features.5"]) as cam:
        ref = cam(x, 1)["features.5"].raw
    for layer in ("module.features.5", "features.5"):
        with CAM(wrapped, [layer]) as cam:
            torch.testing.assert_close(cam(x, 1)[layer].raw, ref)
    with CAM(model, ["module.features.5"]) as cam:
        torch.testing.assert_close(cam(x, 1)["module.features.5"].raw, ref)


def test_3d_tiny_net() -> None:
    model = _model(dims=3)
    x = torch.randn(2, 1, 8, 16, 16)
    with CAM(model, ["features.5"], "hirescam") as cam:
        res = cam(x, torch.tensor([0, 1]))["features.5"]
    assert res.raw.shape == (2, 1, 4, 8, 8)
    assert res.upsampled.shape == (2, 1, 8, 16, 16)
    assert res.normalised.min() >= 0 and res.normalised.max() <= 1


def test_normalised_not_inverted_and_constant_is_zero() -> None:
    model = _model()
    x = torch.randn(3, 1, 32, 32)
    with CAM(model, ["features.5"]) as cam:
        res = cam(x, 1)["features.5"]
    for i in range(3):
        up, nm = res.upsampled[i].flatten(), res.normalised[i].flatten()
        if up.max() > up.min():
            assert int(nm.argmax()) == int(up.argmax())
            assert float(nm.max()) == pytest.approx(1.0)
            assert float(nm.min()) == pytest.approx(0.0)
    # A network whose gradient at the layer is zero gives a constant (zero) map -> normalised zeros.
    model.fc.weight.data.zero_()
    with CAM(model, ["features.5"]) as cam:
        res = cam(x, 1)["features.5"]
    assert torch.count_nonzero(res.raw) == 0 and torch.count_nonzero(res.normalised) == 0


def test_hooks_removed() -> None:
    model = _model()
    before = {n: len(m._forward_hooks) for n, m in model.named_modules()}
    cam = CAM(model, ["features.2", "features.5"])
    assert len(model.features[5]._forward_hooks) == before["features.5"] + 1
    cam.remove()
    assert {n: len(m._forward_hooks) for n, m in model.named_modules()} == before
    with pytest.raises(RuntimeError):
        cam(torch.randn(1, 1, 32, 32))
    # Outside a CAM call the hooks do not alter the forward pass.
    model.eval()
    with CAM(model, ["features.5"]):
        out = model(torch.ones(1, 1, 32, 32))
    torch.testing.assert_close(out, model(torch.ones(1, 1, 32, 32)))


def test_unknown_method() -> None:
    with pytest.raises(InputError):
        CAM(_model(), ["features.5"], "gradcam++")


def test_layer_stride() -> None:
    model = _model()
    assert layer_stride(model, "features.0", 32) == 1
    assert layer_stride(model, "features.5", (32, 32)) == 2
    # Valid (unpadded) convolutions: one-size ratio overestimates, the two-size measurement does not.
    torch.manual_seed(0)
    valid = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3, stride=2), nn.Conv2d(2, 2, 3, stride=2))
    assert layer_stride(valid, "2", 30) == 4
    with pytest.raises(InputError):
        layer_stride(model, "nope", 32)


def test_numpy_integer_class_idx() -> None:
    import numpy as np

    model = _model()
    x = torch.randn(3, 1, 32, 32)
    with CAM(model, ["features.5"]) as cam:
        a = cam(x, np.int64(1))["features.5"]
        b = cam(x, 1)["features.5"]
    torch.testing.assert_close(a.raw, b.raw)
    assert a.class_idx.tolist() == [1, 1, 1]


def test_gated_map_is_the_layer_map_times_the_normalised_gate() -> None:
    """gate_layer: each layer's upsampled map x the gate layer's min-max LayerCAM, from one pass; the same as two
    separate CAM calls; gate-only layers are not returned."""
    model = _model()
    x = torch.randn(3, 1, 16, 16)
    cls = torch.tensor([1, 0, 1])
    with CAM(model, ["features.5"], "gradcam", gate_layer="features.1") as cam:
        res = cam(x, cls)
    assert set(res) == {"features.5", "features.5*features.1"}
    with CAM(model, ["features.5"], "gradcam") as deep, CAM(model, ["features.1"], "layercam") as fine:
        coarse = deep(x, cls)["features.5"].upsampled
        gate = fine(x, cls)["features.1"].normalised
    gated = res["features.5*features.1"]
    torch.testing.assert_close(gated.upsampled, coarse * gate)
    torch.testing.assert_close(gated.raw, gated.upsampled)
    torch.testing.assert_close(gated.peak, (coarse * gate).flatten(1).amax(1))
    assert gated.normalised.amax() == 1.0 and gated.upsampled.shape == (3, 1, 16, 16)
    with pytest.raises(InputError, match="unknown CAM method"):
        CAM(model, ["features.5"], gate_layer="features.1", gate_method="guided")
