"""Class activation maps (Grad-CAM, HiResCAM, LayerCAM) that keep the raw map strength, optionally gated.

Gating. A deep layer's map says which structure makes the class (it ranks the coronary deposit above brighter
bone), but at stride 16-32 one cell spans 15-30 mm, far wider than a 1-3 mm deposit. A stride-2 layer's LayerCAM
has pixel-scale detail but little class selectivity. ``gate_layer`` multiplies each deep map by the shallow layer's
min-max normalised LayerCAM: the idea of Guided Grad-CAM (Selvaraju et al. 2017: Grad-CAM x guided
backpropagation), with LayerCAM as the fine map, from the same forward and backward pass.

Written with our own hooks instead of ``monai.visualize`` because MONAI 1.6.1 inverts the map by default,
computes wrong batched maps when samples differ in class, never removes its hooks, calls ``model.zero_grad()``
and fails under ``torch.no_grad()`` (see shared/reference/cam_and_bundle_notes.md).

Gradients are taken with ``torch.autograd.grad`` with respect to the hooked activations only, so parameter
``.grad`` fields are never written: a CAM can run on an evaluator between training steps without touching the
optimiser's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coronary_calcium.errors import InputError

__all__ = ["CAM", "CAMResult", "GATE_METHOD", "METHODS", "gated_name", "layer_stride", "valid_layer_names",
           "unwrap_model"]

METHODS = ("gradcam", "hirescam", "layercam")
GATE_METHOD = "layercam"  # the fine map that gates the others
_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass
class CAMResult:
    """CAM of one layer for a batch; all tensors detached, float32, on the input's device.

    raw: (B,1,*layer_spatial) ReLU'd, un-normalised map (its strength is comparable between slices).
    upsampled: (B,1,*input_spatial) ``raw`` resized (bi/trilinear) to the input size.
    normalised: per-sample min-max of ``upsampled`` to [0, 1] (high = salient; a constant map gives zeros).
    peak: (B,) maximum of ``raw`` per sample.
    logits: (B, n_classes) model output.
    class_idx: (B,) class whose score was explained.
    """

    raw: torch.Tensor
    upsampled: torch.Tensor
    normalised: torch.Tensor
    peak: torch.Tensor
    logits: torch.Tensor
    class_idx: torch.Tensor


def unwrap_model(model: nn.Module) -> nn.Module:
    """The wrapped network of a DataParallel / DistributedDataParallel model, else the model itself."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def valid_layer_names(model: nn.Module) -> list[str]:
    """Dotted ``named_modules()`` names of ``model`` usable as CAM layers (the root '' excluded)."""
    return [name for name, _ in model.named_modules() if name]


def _resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The module of ``unwrap_model(model)`` named ``layer``, accepting or dropping a ``module.`` prefix."""
    inner = unwrap_model(model)
    modules = dict(inner.named_modules())
    candidates = [layer]
    name = layer
    while name.startswith("module."):  # names copied from a DDP/DataParallel state dict
        name = name[len("module.") :]
        candidates.append(name)
    for cand in candidates:
        if cand and cand in modules:
            return modules[cand]
    raise InputError(
        layer,
        f"not a layer of {type(inner).__name__}; valid layer names: {', '.join(valid_layer_names(inner))}",
    )


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _logits_of(output: object) -> torch.Tensor:
    # Some networks return (logits, aux_logits) in training mode; the first entry holds the logits.
    logits = _first_tensor(output)
    if logits is None or logits.ndim != 2:
        raise InputError("model output", "expected logits of shape (B, n_classes)")
    return logits


def _save_modes(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    # Restore per module: a model may deliberately keep some submodules (e.g. frozen BN) in eval mode.
    for module, training in modes.items():
        module.training = training


def _resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    nd = maps.ndim - 2
    if tuple(maps.shape[2:]) == tuple(size):
        return maps.clone()
    out = F.interpolate(maps, size=tuple(size), mode=_INTERP[nd], align_corners=False)
    return out.clamp_min(0.0)


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    rng = hi - lo
    # A constant map carries no location: return zeros rather than dividing by zero.
    out = torch.where(rng > 0, (flat - lo) / rng.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.view_as(maps)


class CAM:
    """Class activation maps of one or more layers, hooks registered once.

    ``CAM(model, ["Mixed_6e", "Mixed_7c"], method="gradcam")``; call it as ``cam(x, class_idx)``.
    Methods: "gradcam" (channel weights = spatial mean of the gradients), "hirescam" (element-wise
    gradient x activation, finer), "layercam" (ReLU(gradient) x activation, finer).
    The model runs in eval mode during the call and its modes are restored afterwards; parameter ``.grad``
    is never touched. Remove the hooks with ``.remove()`` or use the object as a context manager.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        method: str = "gradcam",
        gate_layer: str | None = None,
        gate_method: str = GATE_METHOD,
    ):
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise InputError("layers", "give at least one layer name")
        for m in (method, gate_method):
            if m not in METHODS:
                raise InputError(m, f"unknown CAM method; choose one of {', '.join(METHODS)}")
        self.model = model
        self.layers = list(layers)
        self.method = method
        self.gate_layer = gate_layer
        self.gate_method = gate_method
        hooked = self.layers + ([gate_layer] if gate_layer is not None and gate_layer not in self.layers else [])
        self._hooked = hooked
        self._modules = {layer: _resolve_layer(model, layer) for layer in hooked}
        self._recording = False
        self._acts: dict[str, list[torch.Tensor]] = {layer: [] for layer in hooked}
        self._handles = [
            module.register_forward_hook(self._make_hook(layer)) for layer, module in self._modules.items()
        ]

    def _make_hook(self, layer: str):
        def hook(module: nn.Module, inputs: object, output: object):
            if not self._recording:
                return None
            act = _first_tensor(output)
            if act is None:
                raise InputError(layer, f"output of {type(module).__name__} is not a tensor; pick another layer")
            self._acts[layer].append(act)
            # Hand a clone downstream so a later in-place op (e.g. ReLU(inplace=True)) cannot overwrite the
            # activation we keep; gradients still flow back through the clone to ``act``.
            clone = act.clone()
            if isinstance(output, torch.Tensor):
                return clone
            rest = list(output[1:])
            return output._make([clone, *rest]) if hasattr(output, "_make") else type(output)([clone, *rest])

        return hook

    def remove(self) -> None:
        """Remove the hooks; the object cannot be called afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> CAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:
        try:
            self.remove()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass

    def _class_indices(self, logits: torch.Tensor, class_idx: int | torch.Tensor | None) -> torch.Tensor:
        b, n = logits.shape
        if class_idx is None:
            return logits.argmax(1)
        idx = torch.as_tensor(class_idx, device=logits.device).long()
        if idx.ndim == 0:  # int, numpy integer or 0-d tensor: the same class for every sample
            idx = idx.expand(b)
        else:
            idx = idx.flatten()
            if idx.numel() != b:
                raise InputError("class_idx", f"expected {b} class indices (one per sample), got {idx.numel()}")
        if (idx < 0).any() or (idx >= n).any():
            raise InputError("class_idx", f"class indices must lie in [0, {n}), got {idx.tolist()}")
        return idx

    def _combine(self, act: torch.Tensor, grad: torch.Tensor, method: str | None = None) -> torch.Tensor:
        spatial = tuple(range(2, act.ndim))
        method = method or self.method
        if method == "gradcam":
            cam = (grad.mean(dim=spatial, keepdim=True) * act).sum(1, keepdim=True)
        elif method == "hirescam":
            cam = (grad * act).sum(1, keepdim=True)
        else:  # layercam
            cam = (grad.clamp_min(0) * act).sum(1, keepdim=True)
        return cam.clamp_min(0)

    def __call__(self, x: torch.Tensor, class_idx: int | torch.Tensor | None = None) -> dict[str, CAMResult]:
        """CAMs of all layers for ``x`` (B,C,H,W) or (B,C,D,H,W).

        class_idx: None = each sample's predicted class; int = that class for all; (B,) tensor = per sample.
        With a ``gate_layer``, each layer also gets an entry ``gated_name(layer)``: its ``upsampled`` map times
        the gate layer's normalised map (``raw`` = ``upsampled`` = that product, at the input size).
        """
        if not self._handles:
            raise RuntimeError("CAM hooks were removed; build a new CAM")
        if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.ndim - 2 not in _INTERP:
            raise InputError("x", "expected a tensor (B,C,H,W) or (B,C,D,H,W)")
        net = unwrap_model(self.model)  # DDP's reducer must not see this forward/backward
        modes = _save_modes(net)
        for acts in self._acts.values():
            acts.clear()
        try:
            # inference_mode(False)/enable_grad: work when the caller runs under no_grad or inference_mode.
            with torch.inference_mode(False), torch.enable_grad():
                net.eval()
                # The input requires grad so a graph exists even when all parameters are frozen.
                xin = x.detach().clone().requires_grad_(True)
                self._recording = True
                try:
                    logits = _logits_of(net(xin))
                finally:
                    self._recording = False
                idx = self._class_indices(logits, class_idx)
                # gather + sum: each sample's gradient is that of its own class (eval mode: samples independent).
                score = logits.gather(1, idx[:, None]).sum()
                acts = []
                for layer in self._hooked:
                    calls = self._acts[layer]
                    if len(calls) != 1:
                        raise InputError(layer, f"module ran {len(calls)} times in one forward; pick another layer")
                    act = calls[0]
                    if act.ndim != x.ndim or act.shape[0] != x.shape[0]:
                        raise InputError(layer, f"output shape {tuple(act.shape)} has no spatial map like the input")
                    acts.append(act)
                grads = torch.autograd.grad(score, acts, allow_unused=True)
        finally:
            _restore_modes(modes)
            for a in self._acts.values():
                a.clear()
        out: dict[str, CAMResult] = {}
        logits_out = logits.detach().float()

        def result(raw: torch.Tensor, up: torch.Tensor) -> CAMResult:
            return CAMResult(raw=raw, upsampled=up, normalised=_minmax(up), peak=raw.flatten(1).amax(1),
                             logits=logits_out, class_idx=idx.detach())

        gate = None
        for layer, act, grad in zip(self._hooked, acts, grads):
            if grad is None:
                raise InputError(layer, "does not influence the class score; pick another layer")
            if layer == self.gate_layer:
                gate = _minmax(_resize(self._combine(act.detach().float(), grad.float(), self.gate_method),
                                       x.shape[2:]))
            if layer in self.layers:
                raw = self._combine(act.detach().float(), grad.float())
                out[layer] = result(raw, _resize(raw, x.shape[2:]))
        if gate is not None:
            for layer in self.layers:
                gated = out[layer].upsampled * gate
                out[gated_name(layer, self.gate_layer)] = result(gated, gated)
        return out


def gated_name(layer: str, gate_layer: str | None) -> str:
    """Result key of ``layer``'s map gated by ``gate_layer`` ("<layer>*<gate_layer>"); ``layer`` itself without one."""
    return layer if gate_layer is None else f"{layer}*{gate_layer}"


def _infer_in_chans(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(getattr(module, "in_channels", None), int):
            return module.in_channels
    raise InputError(type(model).__name__, "cannot infer input channels; pass in_chans")


def layer_stride(
    model: nn.Module,
    layer: str,
    input_size: int | Sequence[int],
    in_chans: int | None = None,
) -> int:
    """Effective stride of ``layer`` (input pixels per output pixel), measured with dummy forwards.

    input_size: spatial size (int = square 2D, or (H,W) / (D,H,W)). The stride is measured from two forwards
    at ``input_size`` and twice that, since valid (unpadded) convolutions make ``input/output`` at one size
    overestimate it (Inception-v3 Mixed_6e: 256/14 = 18, but stride 16). The largest stride over axes is returned.
    """
    net = unwrap_model(model)
    module = _resolve_layer(model, layer)
    spatial = [int(input_size)] * 2 if isinstance(input_size, int) else [int(s) for s in input_size]
    if not 1 <= len(spatial) <= 3:
        raise InputError("input_size", "expected 1 to 3 spatial sizes")
    chans = in_chans if in_chans is not None else _infer_in_chans(net)
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    shapes: list[tuple[int, ...]] = []

    def hook(mod: nn.Module, inputs: object, output: object) -> None:
        act = _first_tensor(output)
        if act is None or act.ndim != len(spatial) + 2:
            raise InputError(layer, "output has no spatial map")
        shapes.append(tuple(act.shape[2:]))

    modes = _save_modes(net)
    handle = module.register_forward_hook(hook)
    try:
        net.eval()
        with torch.no_grad():
            for scale in (1, 2):
                net(torch.zeros(1, chans, *[s * scale for s in spatial], device=device, dtype=dtype))
    finally:
        handle.remove()
        _restore_modes(modes)
    small, large = shapes[0], shapes[-1]
    strides = []
    for s, o1, o2 in zip(spatial, small, large):
        strides.append(round(s / (o2 - o1)) if o2 > o1 else s)
    return int(max(strides))
