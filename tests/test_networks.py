"""The network registry: freezing policies, local pretrained loading, CAM layers, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from monai.visualize.class_activation_maps import ModelWithHooks
from torch.nn.modules.batchnorm import _BatchNorm

from coronary_calcium.errors import InputError
from coronary_calcium.networks import (
    NETWORKS,
    FrozenStatsBatchNorm2d,
    FrozenStatsBatchNormAct2d,
    count_parameters,
    create_network,
    fuse_batch_norm,
    layer_strides,
    load_checkpoint_weights,
    network_spec,
    paper_network_names,
    trainable_parameters,
    validate_cam_layers,
    write_stand_in_imagenet_weights,
)

ALL = list(NETWORKS)
PRETRAINED = [n for n, s in NETWORKS.items() if s.pretrained]

# The documented policies, written out independently of the registry: parameter-name prefixes that train.
EXPECTED_TRAINABLE = {
    "inception_v3_scratch": None,  # all
    "inception_v3_last": ("fc.",),
    "xception_last": ("fc.",),
    "xception_last4": ("conv3.", "bn3.", "conv4.", "bn4.", "fc."),
    "vgg16_scratch": None,
    "tiny_cnn": None,
}

# Output strides of the CAM layers (input pixels per feature-map pixel).
EXPECTED_STRIDES = {
    "inception_v3_scratch": {"Mixed_6e": 16, "Mixed_7c": 32},
    "inception_v3_last": {"Mixed_6e": 16, "Mixed_7c": 32},
    "xception_last": {"block11": 16, "act4": 32},
    "xception_last4": {"block11": 16, "act4": 32},
    "vgg16_scratch": {"features.32": 8, "features.42": 16},
    "tiny_cnn": {"layer2": 8, "layer3": 16},
}


def _size(name: str) -> int:
    # Inception-v3's smallest input is 75 px; the others run on 64 px to keep tests fast on 2 cores.
    return 75 if NETWORKS[name].timm_name == "inception_v3" else 64


def _batch(name: str, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    s = _size(name)
    return torch.randn(n, 1, s, s, generator=gen), torch.arange(n) % 2


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory) -> dict[str, Path]:
    """One stand-in ImageNet file (random weights, real keys and shapes) per pretrained architecture."""
    folder = tmp_path_factory.mktemp("imagenet")
    files: dict[str, Path] = {}
    for name in PRETRAINED:
        spec = NETWORKS[name]
        if spec.timm_name not in files:
            # With pretrained_ignore (Inception-v3), write the auxiliary head too, as torchvision's file has it.
            files[spec.timm_name] = write_stand_in_imagenet_weights(
                name, folder / f"{spec.timm_name}.pth", aux_logits=bool(spec.pretrained_ignore)
            )
    return files


@pytest.fixture(scope="module")
def weights_for(imagenet_files):
    return lambda name: imagenet_files[NETWORKS[name].timm_name] if NETWORKS[name].pretrained else None


@pytest.fixture(scope="module")
def built(weights_for):
    """Networks built once per module for read-only checks."""
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache[name] = create_network(name, pretrained_weights=weights_for(name))
        return cache[name]

    return get


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_holds_the_five_paper_configurations_and_a_test_network():
    assert paper_network_names() == (
        "inception_v3_scratch",
        "inception_v3_last",
        "xception_last",
        "xception_last4",
        "vgg16_scratch",
    )
    assert NETWORKS["tiny_cnn"].for_testing
    assert {n: s.pretrained for n, s in NETWORKS.items()} == {
        "inception_v3_scratch": False,
        "inception_v3_last": True,
        "xception_last": True,
        "xception_last4": True,
        "vgg16_scratch": False,
        "tiny_cnn": False,
    }
    for name, spec in NETWORKS.items():
        assert spec.name == name and timm.is_model(spec.timm_name)
        assert network_spec(name) is spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        NETWORKS["tiny_cnn"].pretrained = True


def test_unknown_network_name_lists_valid_names():
    for call in (lambda: network_spec("resnet50"), lambda: create_network("resnet50")):
        with pytest.raises(InputError) as err:
            call()
        assert "resnet50" in str(err.value) and "unknown network" in str(err.value)
        assert all(name in str(err.value) for name in NETWORKS)


@pytest.mark.parametrize("kwargs", [{"in_channels": 0}, {"num_classes": 0}, {"drop_rate": 1.5}])
def test_bad_construction_parameters(kwargs):
    with pytest.raises(InputError, match=next(iter(kwargs))):
        create_network("tiny_cnn", **kwargs)


# --------------------------------------------------------------------------------------------------
# Freezing


@pytest.mark.parametrize("name", ALL)
def test_one_sgd_step_moves_only_the_trainable_parameters(name, weights_for):
    torch.manual_seed(0)
    model = create_network(name, pretrained_weights=weights_for(name))
    prefixes = EXPECTED_TRAINABLE[name]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if prefixes is None or n.startswith(prefixes)}
    assert trainable == expected
    assert [id(p) for p in trainable_parameters(model)] == [
        id(p) for n, p in model.named_parameters() if n in expected
    ]
    if name == "inception_v3_last":
        assert trainable == {"fc.weight", "fc.bias"}

    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    # All parameters go to the optimizer (a careless trainer): frozen ones must still not move,
    # even with momentum and weight decay.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    x, y = _batch(name)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()

    for n, p in model.named_parameters():
        if n in expected:
            assert not torch.equal(p, params[n]), f"{n} should have trained"
        else:
            assert torch.equal(p, params[n]), f"{n} should be frozen"

    # BN statistics: fixed in the frozen parts, updated where the BN layer trains.
    bn_layers = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    for n, m in bn_layers.items():
        frozen = not any(p.requires_grad for p in m.parameters(recurse=False))
        assert m.training is not frozen, n
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            same = torch.equal(buffers[f"{n}.{key}"], getattr(m, key))
            assert same is frozen, f"{n}.{key}: frozen={frozen}"
    model.eval()
    assert not any(m.training for m in model.modules())


def test_xception_last4_trains_exactly_the_final_block_and_the_head(built):
    model = built("xception_last4")
    modules = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert modules == {"conv3", "bn3", "conv4", "bn4", "fc"}
    assert type(model.bn3) is torch.nn.BatchNorm2d and type(model.bn2) is FrozenStatsBatchNorm2d
    model.train()
    assert model.bn3.training and model.bn4.training and not model.block12.rep[2].training
    model.eval()


def test_frozen_batchnorm_survives_copy_pickle_and_scripting(built):
    model = built("xception_last")
    for clone in (copy.deepcopy(model), _pickled(model)):
        clone.train()
        frozen = [m for m in clone.modules() if isinstance(m, FrozenStatsBatchNorm2d)]
        assert frozen and not any(m.training for m in frozen)
        assert clone.fc.training
    model.eval()
    scripted = torch.jit.script(model)
    x, _ = _batch("xception_last", 2)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    # Inception-v3's BN layers are timm BatchNormAct2d: they get their own frozen variant.
    inception = built("inception_v3_last")
    assert all(type(m) is FrozenStatsBatchNormAct2d for m in inception.modules() if isinstance(m, _BatchNorm))


def _pickled(model: torch.nn.Module) -> torch.nn.Module:
    """A round trip through pickle (what spawning data-loader or DDP processes does to a model)."""
    return pickle.loads(pickle.dumps(model))


def test_state_dict_keys_match_the_plain_timm_model(built):
    # Freezing swaps BN classes in place: names and keys (CAM layers, checkpoints) stay those of timm.
    plain = timm.create_model("legacy_xception", pretrained=False, num_classes=2, in_chans=1)
    assert list(built("xception_last4").state_dict()) == list(plain.state_dict())


def test_count_parameters(built):
    assert count_parameters(built("tiny_cnn")) == {"total": 8346, "trainable": 8346}
    assert count_parameters(built("inception_v3_last"))["trainable"] == 2048 * 2 + 2
    counts = count_parameters(built("xception_last"))
    assert counts["trainable"] == 2048 * 2 + 2 and counts["total"] == 20_810_474


# --------------------------------------------------------------------------------------------------
# Pretrained weights from a local file


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_weights_load_for_one_channel_with_a_fresh_head(name, weights_for):
    path = weights_for(name)
    file_state = torch.load(path, weights_only=True)
    model = create_network(name, in_channels=1, num_classes=2, pretrained_weights=path)
    state = model.state_dict()
    first = model.pretrained_cfg["first_conv"] + ".weight"
    assert state[first].shape[1] == 1
    torch.testing.assert_close(state[first], file_state[first].sum(dim=1, keepdim=True))
    for key, value in state.items():
        if key == first or key.startswith("fc."):
            continue
        assert torch.equal(value, file_state[key]), key
    assert model.fc.weight.shape == (2, 2048) and file_state["fc.weight"].shape == (1000, 2048)
    x, _ = _batch(name, 2)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 2)


def test_pretrained_weights_for_three_window_channels_and_safetensors(tmp_path):
    path = write_stand_in_imagenet_weights("xception_last", tmp_path / "xception.safetensors")
    from safetensors.torch import load_file

    file_state = load_file(str(path))
    model = create_network("xception_last", in_channels=3, num_classes=2, pretrained_weights=path)
    assert torch.equal(model.conv1.weight, file_state["conv1.weight"])  # 3 channels: RGB filters as they are
    assert torch.equal(model.block7.rep[1].pointwise.weight, file_state["block7.rep.1.pointwise.weight"])


def test_inception_file_without_aux_head_also_loads(tmp_path):
    path = write_stand_in_imagenet_weights("inception_v3_last", tmp_path / "inception_timm.pth")
    model = create_network("inception_v3_last", pretrained_weights=path)
    assert torch.equal(model.Mixed_6e.branch1x1.conv.weight, torch.load(path)["Mixed_6e.branch1x1.conv.weight"])


def test_pretrained_spec_without_weights_file_fails_and_says_how_to_fix():
    with pytest.raises(InputError) as err:
        create_network("xception_last")
    message = str(err.value)
    assert "xception_last" in message and "pretrained_weights" in message
    assert "nothing is downloaded" in message and "scratch" in message


def test_missing_weights_file(tmp_path):
    with pytest.raises(InputError, match="no such weights file"):
        create_network("inception_v3_last", pretrained_weights=tmp_path / "absent.pth")


def test_scratch_spec_refuses_a_weights_file(weights_for):
    with pytest.raises(InputError, match="from scratch"):
        create_network("inception_v3_scratch", pretrained_weights=weights_for("inception_v3_last"))


def test_weights_of_another_architecture_fail_clearly(weights_for):
    xception_file = weights_for("xception_last")
    with pytest.raises(InputError) as err:
        create_network("inception_v3_last", pretrained_weights=xception_file)
    message = str(err.value)
    assert str(xception_file) in message and "does not fit" in message and "inception_v3_last" in message
    assert "missing keys: Conv2d_1a_3x3.conv.weight" in message and "unexpected keys: conv1.weight" in message


def test_partly_fitting_weights_do_not_load_partially(weights_for, tmp_path):
    state = torch.load(weights_for("xception_last"), weights_only=True)
    del state["block5.rep.1.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(InputError) as err:
        create_network("xception_last4", pretrained_weights=path)
    assert "block5.rep.1.conv1.weight" in str(err.value) and "extra.weight" in str(err.value)


def test_a_file_that_is_not_weights(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot be read as a weights file"):
        create_network("xception_last", pretrained_weights=path)


# --------------------------------------------------------------------------------------------------
# CAM layers


@pytest.mark.parametrize("name", ALL)
def test_cam_layers_exist_with_stride_at_most_16_before_the_final_conv(name, built):
    model = built(name)
    layers = NETWORKS[name].cam_layers
    assert validate_cam_layers(model, layers) == layers
    strides = layer_strides(model, layers)
    assert strides == EXPECTED_STRIDES[name]
    assert min(strides[layer] for layer in layers[:-1]) <= 16
    assert strides[layers[-1]] == max(strides.values())  # the final conv layer is the coarsest
    gate = NETWORKS[name].gate_layer  # the fine map that gates the CAMs: pixel-scale detail
    assert gate is not None and layer_strides(model, [gate])[gate] <= 2


@pytest.mark.parametrize("name", ALL)
def test_cam_layers_receive_gradients(name, built):
    # Frozen configurations only propagate a gradient to their CAM layers when the input requires grad.
    model = built(name)
    layers = NETWORKS[name].cam_layers
    hooked = ModelWithHooks(model, layers, register_forward=True, register_backward=True)
    x, _ = _batch(name, 2)
    _, acts, grads = hooked(x.requires_grad_(True), class_idx=1)
    assert len(grads) == len(layers)
    for act, grad in zip(acts, grads):
        assert act.shape == grad.shape and grad.abs().sum() > 0


def test_wrong_cam_layer_name_lists_valid_names(built):
    with pytest.raises(InputError) as err:
        validate_cam_layers(built("inception_v3_scratch"), ["Mixed_6E"])
    assert "Mixed_6E" in str(err.value) and "'Mixed_6e'" in str(err.value) and "Mixed_7c" in str(err.value)
    with pytest.raises(InputError):
        validate_cam_layers(built("tiny_cnn"), [])


# --------------------------------------------------------------------------------------------------
# Project checkpoints


def test_checkpoint_formats_load(tmp_path):
    torch.manual_seed(3)
    source = create_network("tiny_cnn")
    state = source.state_dict()
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1)
    variants = {
        "monai.pt": {"network": state, "optimizer": optimizer.state_dict()},  # MONAI CheckpointSaver
        "model.pt": {"model": state},
        "lightning.ckpt": {"state_dict": state, "epoch": 3},
        "raw.pth": state,
        "ddp.pt": {"network": {f"module.{k}": v for k, v in state.items()}},
    }
    for filename, content in variants.items():
        torch.save(content, tmp_path / filename)
        target = create_network("tiny_cnn")
        assert load_checkpoint_weights(target, tmp_path / filename, "tiny_cnn") is target
        for key, value in target.state_dict().items():
            assert torch.equal(value, state[key]), (filename, key)


def test_checkpoint_of_another_network_fails_clearly(tmp_path, built):
    path = tmp_path / "tiny.pt"
    torch.save({"network": create_network("tiny_cnn").state_dict()}, path)
    model = built("inception_v3_scratch")
    before = model.Conv2d_1a_3x3.conv.weight.clone()
    with pytest.raises(InputError) as err:
        load_checkpoint_weights(model, path, "inception_v3_scratch")
    message = str(err.value)
    assert str(path) in message and "does not fit network 'inception_v3_scratch'" in message
    assert "stem.0.weight" in message
    assert torch.equal(model.Conv2d_1a_3x3.conv.weight, before)  # nothing loaded


def test_checkpoint_with_other_class_count_or_without_weights_fails(tmp_path):
    path = tmp_path / "three_classes.pt"
    torch.save({"network": create_network("tiny_cnn", num_classes=3).state_dict()}, path)
    with pytest.raises(InputError, match=r"shape mismatches: fc.weight \(3, 32\)"):
        load_checkpoint_weights(create_network("tiny_cnn"), path, "tiny_cnn")
    empty = tmp_path / "trainer_only.pt"
    torch.save({"trainer": {"epoch": 3}}, empty)
    with pytest.raises(InputError, match="holds no network weights"):
        load_checkpoint_weights(create_network("tiny_cnn"), empty, "tiny_cnn")


def test_pretrained_spec_built_for_a_checkpoint_needs_no_imagenet_file(tmp_path, built):
    trained = built("xception_last")
    path = tmp_path / "model.pt"
    torch.save({"network": trained.state_dict()}, path)
    model = load_checkpoint_weights(create_network("xception_last", for_checkpoint=True), path, "xception_last")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("name", ["inception_v3_scratch", "xception_last4", "tiny_cnn"])
def test_folding_batch_norm_keeps_outputs_layers_and_cams(name, weights_for):
    from coronary_calcium.explain.cam import CAM

    model = create_network(name, pretrained_weights=weights_for(name))
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():  # statistics and affine terms far from identity, so folding them is tested
        if isinstance(m, _BatchNorm):
            m.running_mean.normal_(0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0, 0.2, generator=gen)
    model.eval()
    folded = fuse_batch_norm(copy.deepcopy(model))
    n_bn = sum(isinstance(m, _BatchNorm) for m in model.modules())
    left = sum(isinstance(m, _BatchNorm) for m in folded.modules())
    if name != "xception_last4":  # Xception's norms follow separable convolutions and stay
        assert left == 0 < n_bn
    assert [n for n, _ in folded.named_modules() if n in NETWORKS[name].cam_layers] == list(NETWORKS[name].cam_layers)
    x, _ = _batch(name, 2)
    with torch.no_grad():
        a, b = model(x), folded(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    layer = NETWORKS[name].cam_layers[0]
    with CAM(model, [layer]) as cam_a, CAM(folded, [layer]) as cam_b:
        ma = cam_a(x.clone().requires_grad_(True), 1)[layer].normalised
        mb = cam_b(x.clone().requires_grad_(True), 1)[layer].normalised
    assert float((ma - mb).abs().max()) < 1e-3


def test_folding_batch_norm_refuses_a_training_model():
    model = create_network("tiny_cnn")
    with pytest.raises(InputError, match="eval"):
        fuse_batch_norm(model.train())
