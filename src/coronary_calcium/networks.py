"""The paper's 2D slice classifiers: one registry of configurations, built by timm, frozen by policy.

Every configuration lives in :data:`NETWORKS` (a :class:`NetworkSpec` each); nothing else in the code
branches on a network name. :func:`create_network` builds a spec with ``timm.create_model`` (never
downloading anything), loads ImageNet weights for pretrained specs from a local file only, and applies
the spec's freezing policy.

Freezing and BatchNorm. Parameters outside ``spec.trainable_modules`` get ``requires_grad=False``.
A BatchNorm layer whose parameters are all frozen would still update its running mean/variance in
``train()`` mode, so a "frozen" backbone would drift with the CT data. Such layers are switched (in
place, same name, same ``state_dict`` keys) to :class:`FrozenStatsBatchNorm2d` /
:class:`FrozenStatsBatchNormAct2d`, whose ``train()`` always leaves them in eval mode. The switch lives
in the model itself, not in a function the trainer must remember to call, because MONAI's
``SupervisedTrainer`` calls ``network.train()`` on every iteration and would undo any one-off
``eval()``. BatchNorm layers that train (e.g. ``bn3``/``bn4`` in ``xception_last4``) update their
statistics as usual.

CAM layers. ``spec.cam_layers`` are exact ``named_modules()`` names, intermediate layer(s) first
(stride <= 16 so that 1-20 px calcium can be separated) and the final convolutional feature map last.
For the frozen configurations no parameter before the CAM layers requires gradients, so gradient-based
CAMs (Grad-CAM) only see a gradient at those layers if the *input* requires grad
(``x.requires_grad_(True)``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.layers import BatchNormAct2d, SelectAdaptivePool2d
from timm.models import adapt_input_conv, register_model
from torch import nn

from .errors import InputError

__all__ = [
    "NETWORKS",
    "NetworkSpec",
    "FrozenStatsBatchNorm2d",
    "FrozenStatsBatchNormAct2d",
    "TinyCNN",
    "create_network",
    "network_spec",
    "paper_network_names",
    "trainable_parameters",
    "count_parameters",
    "validate_cam_layers",
    "layer_strides",
    "load_checkpoint_weights",
    "write_stand_in_imagenet_weights",
]

#: Keys under which a checkpoint dict may hold the network's state dict, in order of preference
#: (MONAI CheckpointSaver writes ``{"network": ...}`` or ``{"model": ...}``; timm/Lightning use "state_dict").
CHECKPOINT_KEYS = ("network", "model", "state_dict")
GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax")

# Wrapper prefixes that DDP / torch.compile add to every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class NetworkSpec:
    """One configuration of the paper: architecture, initialisation, what trains, where to take CAMs.

    ``trainable`` names the policy: ``"all"`` (every parameter trains) or a label for a partial policy
    whose exact extent is ``trainable_modules`` (dotted module names; a parameter trains iff it lies in
    one of them). ``pretrained_ignore`` lists key prefixes of published ImageNet files that the network
    does not have (e.g. torchvision's Inception-v3 auxiliary head) and that are dropped on load.
    """

    name: str
    timm_name: str
    pretrained: bool
    trainable: str
    cam_layers: tuple[str, ...]
    description: str
    trainable_modules: tuple[str, ...] = ()
    pretrained_ignore: tuple[str, ...] = ()
    weights_hint: str = ""
    for_testing: bool = False
    # A shallow layer (stride <= 2) whose LayerCAM gates the cam_layers' maps (see coronary_calcium.explain.cam).
    gate_layer: str | None = None
    # Pooling before the classifier: average, as in the paper's networks. ("max" suits deposits covering well
    # under 1 % of a slice, but from scratch at the default learning rate its early logits made training unstable.)
    global_pool: str = "avg"

    def __post_init__(self) -> None:
        # A spec that contradicts itself is a programming error, caught at import.
        if (self.trainable == "all") != (not self.trainable_modules):
            raise ValueError(f"{self.name}: trainable='all' if and only if trainable_modules is empty")
        if len(self.cam_layers) < 2:
            raise ValueError(f"{self.name}: cam_layers needs an intermediate layer and the final conv layer")


NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec(
            name="inception_v3_scratch",
            timm_name="inception_v3",
            pretrained=False,
            trainable="all",
            cam_layers=("Mixed_6e", "Mixed_7c"),
            gate_layer="Conv2d_1a_3x3",
            description="Inception-v3 trained from scratch, all layers trainable (the paper's best, 97 %).",
        ),
        NetworkSpec(
            name="inception_v3_last",
            timm_name="inception_v3",
            pretrained=True,
            trainable="last_layer",
            trainable_modules=("fc",),
            cam_layers=("Mixed_6e", "Mixed_7c"),
            gate_layer="Conv2d_1a_3x3",
            description="ImageNet Inception-v3, frozen; only the new classifier `fc` is trained.",
            # torchvision's inception_v3_google-*.pth carries the auxiliary classifier; timm builds none.
            pretrained_ignore=("AuxLogits.",),
            weights_hint=(
                "timm 'inception_v3.tv_in1k' (Hugging Face timm/inception_v3.tv_in1k, model.safetensors) or "
                "torchvision's inception_v3_google-0cc3c7bd.pth"
            ),
        ),
        NetworkSpec(
            name="xception_last",
            timm_name="legacy_xception",
            pretrained=True,
            trainable="last_layer",
            trainable_modules=("fc",),
            cam_layers=("block11", "act4"),
            gate_layer="act1",
            description="ImageNet Xception (Chollet; timm legacy_xception), frozen; only the new classifier `fc` "
            "is trained.",
            weights_hint="timm 'legacy_xception.tf_in1k' (Hugging Face timm/legacy_xception.tf_in1k, "
            "model.safetensors)",
        ),
        NetworkSpec(
            name="xception_last4",
            timm_name="legacy_xception",
            pretrained=True,
            trainable="last_4_layers",
            # "The last four layers": the four parameterised layers of Xception's final block (Keras
            # block14_sepconv1, block14_sepconv1_bn, block14_sepconv2, block14_sepconv2_bn = timm conv3,
            # bn3, conv4, bn4; a separable conv counts as one layer, as in Keras) plus the new classifier
            # `fc`, which is always trained. block1..block12 (entry/middle flow and block13) stay frozen.
            trainable_modules=("conv3", "bn3", "conv4", "bn4", "fc"),
            cam_layers=("block11", "act4"),
            gate_layer="act1",
            description="ImageNet Xception (timm legacy_xception); the last four layers (conv3, bn3, conv4, bn4) "
            "and the new classifier `fc` are trained, the rest is frozen.",
            weights_hint="timm 'legacy_xception.tf_in1k' (Hugging Face timm/legacy_xception.tf_in1k, "
            "model.safetensors)",
        ),
        NetworkSpec(
            name="vgg16_scratch",
            # VGG16 with BatchNorm after each convolution (timm vgg16_bn): the plain VGG16 trained from scratch does
            # not learn under the bundle's schedule (loss stays at 0.693, every slice negative), not even a toy
            # task (docs/experiments/vgg16_from_scratch); the layers, widths and head are otherwise VGG16's.
            timm_name="vgg16_bn",
            pretrained=False,
            trainable="all",
            # features.32 = ReLU of block4_conv3 (stride 8), features.42 = ReLU of block5_conv3 (stride 16),
            # the last conv layer before the final pool and timm's ConvMlp `pre_logits` head.
            cam_layers=("features.32", "features.42"),
            gate_layer="features.5",  # ReLU of block1_conv2 (stride 1)
            description="VGG16 with BatchNorm (timm vgg16_bn) trained from scratch, all layers trainable (shallow "
            "baseline; timm head with ConvMlp pre_logits).",
        ),
        NetworkSpec(
            name="tiny_cnn",
            timm_name="coronary_tiny_cnn",
            pretrained=False,
            trainable="all",
            cam_layers=("layer2", "layer3"),
            gate_layer="stem",
            description="Four-conv test network (~8 k parameters) for fast tests and CI; not a paper model.",
            for_testing=True,
        ),
    )
}


def paper_network_names() -> tuple[str, ...]:
    """The ids of the paper's configurations (the registry without test networks)."""
    return tuple(name for name, spec in NETWORKS.items() if not spec.for_testing)


def network_spec(name: str) -> NetworkSpec:
    """The registered spec called ``name``; InputError listing the valid names otherwise."""
    try:
        return NETWORKS[name]
    except (KeyError, TypeError):
        raise InputError(name, f"unknown network; valid names: {', '.join(NETWORKS)}") from None


# --------------------------------------------------------------------------------------------------
# BatchNorm layers whose statistics stay fixed


class _StatsFrozen:
    """Mixin: the layer ignores train(True) and stays in eval mode, so running stats never update."""

    def train(self, mode: bool = True):  # noqa: D102 - see class docstring
        return super().train(False)  # type: ignore[misc]


class FrozenStatsBatchNorm2d(_StatsFrozen, nn.BatchNorm2d):
    """BatchNorm2d of a frozen part: normalises with its stored running statistics, always."""


class FrozenStatsBatchNormAct2d(_StatsFrozen, BatchNormAct2d):
    """timm BatchNormAct2d (BN + ReLU, used by Inception-v3) of a frozen part: always in eval mode."""


_FROZEN_STATS: dict[type, type] = {
    nn.BatchNorm2d: FrozenStatsBatchNorm2d,
    BatchNormAct2d: FrozenStatsBatchNormAct2d,
}


def _apply_trainable_policy(model: nn.Module, spec: NetworkSpec) -> None:
    """Set requires_grad by the spec's policy; fix the statistics of BatchNorm layers that are frozen."""
    names = spec.trainable_modules
    for module_name in names:
        model.get_submodule(module_name)  # a typo in the registry must not silently freeze everything
    for param_name, param in model.named_parameters():
        trains = not names or any(param_name.startswith(m + ".") for m in names)
        param.requires_grad_(trains)
    if not names:
        return
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        params = list(module.parameters(recurse=False))
        if any(p.requires_grad for p in params):
            continue
        frozen_cls = _FROZEN_STATS.get(type(module))
        if frozen_cls is None:
            raise TypeError(f"{spec.name}: no frozen-statistics variant of {type(module).__name__} ({module_name})")
        # Swapping the class keeps the object, its name, parameters and state_dict keys (CAM layer names and
        # checkpoints stay valid) and makes every later model.train() leave this layer in eval mode.
        module.__class__ = frozen_cls
        module.train(False)


# --------------------------------------------------------------------------------------------------
# Reading weights files


def _read_weights(path: str | os.PathLike) -> dict:
    """Load a .pth/.pt/.bin (torch.save) or .safetensors file onto the CPU, without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        # map_location: checkpoints saved on a GPU must load on a CPU-only machine.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled objects other than tensors, wrong format
        raise InputError(path, f"cannot be read as a weights file ({type(exc).__name__}: {exc})") from None


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a raw state dict or a {"network"|"model"|"state_dict": ...} checkpoint."""
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise InputError(
            path,
            f"holds no network weights: expected a state dict or a dict with one of {list(CHECKPOINT_KEYS)}; "
            f"found {found}",
        )
    state = dict(obj)
    for prefix in _WRAPPER_PREFIXES:  # saved from a DDP / torch.compile wrapper
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _load_exact(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    what: str,
    may_miss: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``model`` only if it fits completely: no partial loads, InputError otherwise."""
    own = model.state_dict()
    may_miss = set(may_miss)
    # BN batch counters are bookkeeping, not weights; older files lack them.
    missing = [k for k in own if k not in state and k not in may_miss and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(v.shape)} in the file vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_few(mismatched, 3)}")
        raise InputError(path, f"does not fit {what}; " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def _load_imagenet_weights(model: nn.Module, spec: NetworkSpec, path: str | os.PathLike, in_channels: int) -> None:
    """Load an ImageNet file into ``model``: first conv adapted to ``in_channels``, classifier left fresh."""
    path = Path(path)
    state = _extract_state_dict(_read_weights(path), path)
    if spec.pretrained_ignore:
        state = {k: v for k, v in state.items() if not k.startswith(spec.pretrained_ignore)}
    cfg = model.pretrained_cfg  # timm's record of the architecture's first conv and classifier names
    first_conv = f"{cfg['first_conv']}.weight"
    weight = state.get(first_conv)
    if weight is not None and weight.ndim == 4 and weight.shape[1] != in_channels:
        # timm's rule: 1 channel gets the sum over RGB; other counts repeat RGB, scaled by 3 / in_channels.
        state[first_conv] = adapt_input_conv(in_channels, weight, base_chans=weight.shape[1])
    classifiers = cfg["classifier"]
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    head_keys = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
    for key in head_keys:  # the ImageNet head (1000 classes) is replaced by the freshly initialised one
        state.pop(key, None)
    _load_exact(model, state, path, f"network {spec.name!r} ({spec.timm_name}, ImageNet weights)", head_keys)


# --------------------------------------------------------------------------------------------------
# Public API


def create_network(
    name: str,
    *,
    in_channels: int = 1,
    num_classes: int = 2,
    pretrained_weights: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
    global_pool: str | None = None,
    for_checkpoint: bool = False,
) -> nn.Module:
    """Build the registered network ``name`` with timm and apply its freezing policy.

    Pretrained specs need ``pretrained_weights``: a local ImageNet state dict (.pth/.pt/.bin or
    .safetensors, timm or torchvision key names) for the same architecture; nothing is ever downloaded.
    Its first conv is adapted to ``in_channels`` and its classifier dropped (the ``num_classes`` head is
    new); any other mismatch raises InputError. From-scratch specs refuse a weights file. The spec is
    kept as ``model.coronary_spec``.

    ``global_pool`` overrides the spec's pooling before the classifier (timm's "avg", "max", "avgmax",
    "catavgmax"); the default is the spec's, so a checkpoint and the network rebuilt for it always agree.

    ``for_checkpoint=True`` builds a pretrained spec without its ImageNet file, for evaluation/inference
    where :func:`load_checkpoint_weights` overwrites every weight next; never train such a network.
    """
    spec = network_spec(name)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise InputError("in_channels", f"must be a positive integer, got {in_channels!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InputError("num_classes", f"must be a positive integer, got {num_classes!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise InputError("drop_rate", f"must be in [0, 1), got {drop_rate!r}")
    if spec.pretrained and pretrained_weights is None and not for_checkpoint:
        raise InputError(
            name,
            "this configuration starts from ImageNet weights: pass pretrained_weights=<path to a local "
            f"weights file> (e.g. {spec.weights_hint}); nothing is downloaded (offline), and training from "
            "scratch instead would not be this configuration",
        )
    if not spec.pretrained and pretrained_weights is not None:
        raise InputError(
            name,
            f"this configuration trains from scratch; it takes no pretrained_weights (got {pretrained_weights}); "
            "use load_checkpoint_weights to resume from a project checkpoint",
        )
    if pretrained_weights is not None and not Path(pretrained_weights).is_file():
        raise InputError(pretrained_weights, "no such weights file")  # before the (slow) build
    # pretrained=False always: timm would otherwise try to download; ImageNet weights come from the file below.
    global_pool = spec.global_pool if global_pool is None else global_pool
    if global_pool not in GLOBAL_POOLS:
        raise InputError("global_pool", f"unknown pooling {global_pool!r}; valid: {', '.join(GLOBAL_POOLS)}")
    model = timm.create_model(
        spec.timm_name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        drop_rate=drop_rate,
        global_pool=global_pool,
    )
    if spec.pretrained and pretrained_weights is not None:
        _load_imagenet_weights(model, spec, pretrained_weights, in_channels)
    _apply_trainable_policy(model, spec)
    model.coronary_spec = spec
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should get (requires_grad True), in model order."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Numbers of parameters: ``{"total": ..., "trainable": ...}``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def validate_cam_layers(model: nn.Module, layers: str | Iterable[str]) -> tuple[str, ...]:
    """Check CAM target layer names against ``model.named_modules()``; return them as a tuple.

    A wrong name raises InputError listing close matches and the model's top-level layers (MONAI's CAM
    classes would only warn and fail later with a KeyError).
    """
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    if not layers:
        raise InputError("cam_layers", "no layer given")
    valid = [n for n, _ in model.named_modules() if n]
    valid_set = set(valid)
    for layer in layers:
        if layer not in valid_set:
            close = difflib.get_close_matches(layer, valid, n=5, cutoff=0.6)
            top = [n for n, _ in model.named_children()]
            raise InputError(
                layer,
                f"not a layer of {type(model).__name__}; close matches: {close or 'none'}; top-level layers: "
                f"{', '.join(top)} ({len(valid)} named modules in all, dotted as in model.named_modules())",
            )
    return layers


@torch.no_grad()
def layer_strides(
    model: nn.Module, layers: str | Iterable[str], *, in_channels: int | None = None, sizes: tuple[int, int] = (75, 203)
) -> dict[str, float]:
    """Measure each layer's output stride (input pixels per feature-map pixel) with two dummy forwards.

    The stride is (size_b - size_a) / (out_b - out_a), which is exact for padded and unpadded (valid) convs
    alike when the two sizes differ by a multiple of 32. 75 px is Inception-v3's minimum input.
    """
    layers = validate_cam_layers(model, layers)
    modules = dict(model.named_modules())
    if in_channels is None:
        in_channels = model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels
    param = next(model.parameters())
    widths: dict[str, list[int]] = {layer: [] for layer in layers}

    def hook(layer: str):
        def _hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            widths[layer].append(out.shape[-1])

        return _hook

    handles = [modules[layer].register_forward_hook(hook(layer)) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for size in sizes:
            model(torch.zeros(1, in_channels, size, size, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {layer: (sizes[1] - sizes[0]) / (w[1] - w[0]) for layer, w in widths.items()}


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike, name: str) -> nn.Module:
    """Load a project checkpoint into ``model`` (built as network ``name``) on the CPU; return the model.

    Accepts a raw state dict or a dict holding it under "network" (MONAI CheckpointSaver), "model" or
    "state_dict"; DDP/torch.compile key prefixes are removed. A checkpoint of another architecture, class
    count or channel count raises InputError naming the file and a few mismatched keys.
    """
    path = Path(path)
    state = _extract_state_dict(_read_weights(path), path)
    _load_exact(model, state, path, f"network {name!r}")
    return model


def fuse_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it, in place, for inference; return ``model``.

    The pairs: timm's ``ConvNormAct`` (Inception v3's convolutions; a ``BatchNormAct2d`` keeps its dropout and
    activation) and a Conv2d followed by a BatchNorm2d in an ``nn.Sequential``. Module names stay, so CAM layers
    hook as before; outputs agree to float rounding. It saves BatchNorm's pass over every activation (Inception v3's
    forward pass 1.15x on a 2-core AVX2 CPU). The folding itself is torch's ``fuse_conv_bn_eval``. ``model`` must
    be in eval mode: a training BatchNorm normalises by its batch, which no fixed weights can do.
    """
    from timm.layers import ConvNormAct
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if any(m.training for m in model.modules()):
        raise InputError("model", "BatchNorm is folded into the convolutions for inference only: call .eval() first")
    for module in list(model.modules()):
        if isinstance(module, ConvNormAct) and _foldable(module.conv, module.bn):
            after = [getattr(module.bn, part) for part in ("drop", "act") if hasattr(module.bn, part)]
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Sequential(*after)
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, conv), (bn_name, bn) in zip(children, children[1:]):
                if _foldable(conv, bn):
                    setattr(module, name, fuse_conv_bn_eval(conv, bn))
                    setattr(module, bn_name, nn.Identity())
    return model


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def write_stand_in_imagenet_weights(name: str, path: str | os.PathLike, *, aux_logits: bool = False) -> Path:
    """Write a randomly initialised, ImageNet-shaped (3 channels, 1000 classes) state dict for network ``name``.

    For tests and CI only, where the real ImageNet file cannot be downloaded: it has the real file's keys
    and shapes, not its knowledge. ``aux_logits`` adds Inception-v3's auxiliary head, as torchvision's file has.
    """
    spec = network_spec(name)
    extra = {"aux_logits": True} if aux_logits else {}
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000, in_chans=3, **extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------------
# Test network, registered with timm so that every network is built the same way


def _conv_bn_relu(in_chs: int, out_chs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(),  # not in place: hooked CAM layers end here
    )


class TinyCNN(nn.Module):
    """Four stride-2 conv/BN/ReLU stages, global pooling and a linear classifier (~8 k parameters).

    Stages: ``stem`` (stride 2), ``layer1`` (4), ``layer2`` (8), ``layer3`` (16); classifier ``fc``.
    """

    def __init__(
        self, num_classes: int = 2, in_chans: int = 1, drop_rate: float = 0.0, width: int = 8, global_pool: str = "avg"
    ):
        super().__init__()
        self.num_classes = num_classes
        self.stem = _conv_bn_relu(in_chans, width)
        self.layer1 = _conv_bn_relu(width, 2 * width)
        self.layer2 = _conv_bn_relu(2 * width, 2 * width)
        self.layer3 = _conv_bn_relu(2 * width, 4 * width)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(4 * width * self.global_pool.feat_mult(), num_classes)
        # The fields of timm's pretrained_cfg that this module's loaders read.
        self.pretrained_cfg = {
            "architecture": "coronary_tiny_cnn",
            "first_conv": "stem.0",
            "classifier": "fc",
            "num_classes": num_classes,
            "input_size": (in_chans, 256, 256),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.global_pool(x)
        return self.fc(self.head_drop(x))


@register_model
def coronary_tiny_cnn(pretrained: bool = False, **kwargs) -> TinyCNN:
    """timm entrypoint of :class:`TinyCNN` (no pretrained weights exist)."""
    if pretrained:
        raise ValueError("coronary_tiny_cnn has no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # passed by timm.create_model
        kwargs.pop(key, None)
    return TinyCNN(**kwargs)
