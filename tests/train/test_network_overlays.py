"""Each network overlay of the bundle (bundle/configs/networks/*.json): the optimizer gets exactly the parameters
its freezing policy leaves trainable, and after one training step the frozen ones are bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from coronary_calcium.networks import network_spec, write_stand_in_imagenet_weights
from coronary_calcium.train.bundle import BUNDLE_ROOT

OVERLAYS = sorted((BUNDLE_ROOT / "configs" / "networks").glob("*.json"))
ENV = {"inception_v3": "INCEPTION_V3_IMAGENET_WEIGHTS", "legacy_xception": "XCEPTION_IMAGENET_WEIGHTS"}


def test_one_overlay_per_paper_configuration():
    from coronary_calcium.networks import paper_network_names

    assert sorted(p.stem for p in OVERLAYS) == sorted(paper_network_names())


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_overlay_freezing(overlay: Path, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    spec = network_spec(overlay.stem)
    if spec.pretrained:  # a stand-in for the ImageNet file: same keys and shapes, random values
        weights = write_stand_in_imagenet_weights(spec.name, tmp_path / "imagenet.pth")
        monkeypatch.setenv(ENV[spec.timm_name], str(weights))
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / "train.json"), str(overlay)])
    parser.update({"bundle_root": str(BUNDLE_ROOT), "output_dir": str(tmp_path), "channels_last": False,
                   "device": "$torch.device('cpu')"})
    parser.parse()
    network = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    assert parser.get_parsed_content("network_name") == spec.name
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in network.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    if spec.trainable == "all":
        assert trainable == {id(p) for p in network.parameters()}
    else:
        names = {n for n, p in network.named_parameters() if p.requires_grad}
        assert names and all(n.split(".")[0] in spec.trainable_modules for n in names)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    network.train()
    size = 75 if spec.timm_name == "inception_v3" else 32
    channels = parser.get_parsed_content("in_channels")
    loss = torch.nn.functional.cross_entropy(network(torch.rand(2, channels, size, size)), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    for n, p in network.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad or (p.requires_grad and p.grad is not None and not p.grad.any()), n


def test_training_configs_put_the_network_overlay_between_train_and_evaluate():
    from coronary_calcium.train.bundle import training_configs

    assert training_configs("vgg16_scratch", "evaluate") == ["train", "networks/vgg16_scratch", "evaluate"]
    assert training_configs("tiny_cnn") == ["train"]  # a network without an overlay: train.json's defaults
    assert training_configs(None, "evaluate") == ["train", "evaluate"]


@pytest.mark.parametrize(("network", "rate"), [("vgg16_scratch", 1e-4), ("inception_v3_scratch", 2e-3)])
def test_overlay_sets_the_network_learning_rate(network, rate):
    """VGG16-BN from scratch learns at 1e-4 but not at 5e-4 (docs/experiments/vgg16_from_scratch); Inception v3 takes
    train.json's 2e-3 (docs/experiments/inception_learning_rate)."""
    from coronary_calcium.train.bundle import bundle_config_files, training_configs

    parser = ConfigParser()
    parser.read_config(bundle_config_files(training_configs(network)))
    assert parser.get_parsed_content("learning_rate") == rate
    assert parser.get_parsed_content("network_name") == network
