"""Heatmaps that show why: Grad-CAM, saliency and integrated gradients via captum.

Attributions are computed for whole batches (captum attributes every input
of a batch at once), for one head's predicted (or given) class, at the
model's input resolution, then normalised to [0, 1] per image. CNN backbones
use their last convolutional block for Grad-CAM; torchvision's ViT has no
spatial layer, so a probe inside its last encoder block views the patch
tokens as a (D, h, w) grid while Grad-CAM runs (and is removed afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from xreg.errors import ConfigError
from xreg.model.checkpoint import LoadedModel
from xreg.model.models import MultiHeadNet

__all__ = ["METHODS", "Attribution", "attribute", "write_overlay"]

METHODS = ("gradcam", "saliency", "integrated-gradients")


@dataclass(frozen=True)
class Attribution:
    """One input's heatmap (model input resolution, [0, 1]) and what it explains."""

    heatmap: NDArray[np.float32]
    head: str
    label: str
    probability: float


class _Head(nn.Module):
    """The logits of one head as a plain tensor, which captum needs."""

    def __init__(self, model: MultiHeadNet, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.model(x)[self.head]
        return logits


class _TokenGrid(nn.Module):
    """Wraps a ViT block's ``ln_1``: its patch tokens pass ``probe`` as a (B, D, h, w) grid."""

    def __init__(self, inner: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.inner, self.grid, self.probe = inner, grid, nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        cls, patches = y[:, :1], y[:, 1:]
        b, n, d = patches.shape
        grid = self.probe(patches.transpose(1, 2).reshape(b, d, *self.grid))
        return torch.cat([cls, grid.reshape(b, d, n).transpose(1, 2)], dim=1)


@contextmanager
def _gradcam_layer(model: MultiHeadNet, input_hw: tuple[int, int]) -> Iterator[nn.Module]:
    """The layer Grad-CAM reads, for this backbone; a ViT probe is removed on exit."""
    # An ensemble: the first member's layer (the gradient flows through the whole).
    model = getattr(model, "member_nets", [model])[0]
    backbone: Any = model.backbone  # torchvision modules; attributes differ per arch
    if model.arch.startswith("resnet"):
        yield backbone.layer4
    elif model.arch == "vit_b_16":
        block = backbone.encoder.layers[-1]
        original = block.ln_1
        patch = int(backbone.patch_size)
        wrapped = _TokenGrid(original, (input_hw[0] // patch, input_hw[1] // patch))
        block.ln_1 = wrapped
        try:
            yield wrapped.probe
        finally:
            block.ln_1 = original
    else:  # mobilenets, efficientnet: the last block of .features
        yield backbone.features[-1]


def _normalise(maps: Tensor) -> NDArray[np.float32]:
    flat = maps.detach().float().flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    scaled = (flat - low) / (high - low).clamp_min(1e-12)
    return scaled.reshape(maps.shape).cpu().numpy().astype(np.float32)


def attribute(
    loaded: LoadedModel,
    x: Tensor,
    *,
    head: str,
    method: str = "gradcam",
    targets: Sequence[int] | None = None,
    steps: int = 8,
) -> list[Attribution]:
    """Heatmaps for a preprocessed batch ``x`` of shape (B, 3, H, W).

    ``targets`` are class indices of ``head`` (default: each input's
    predicted class). Raises ``ConfigError`` for an unknown head or method.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = loaded.card.head(head)
    model = loaded.model.eval()
    device = next(model.parameters()).device
    x = x.to(device)
    with torch.no_grad():
        probs = torch.softmax(model(x)[head].float(), dim=1)
    chosen = probs.argmax(1) if targets is None else torch.as_tensor(list(targets), device=device)
    forward = _Head(model, head)
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    if method == "gradcam":
        from captum.attr import LayerGradCam

        with _gradcam_layer(model, hw) as layer:
            cam = LayerGradCam(forward, layer).attribute(x, target=chosen,
                                                         relu_attributions=True)
        maps = F.interpolate(cam, size=hw, mode="bilinear", align_corners=False)[:, 0]
    elif method == "saliency":
        from captum.attr import Saliency

        maps = Saliency(forward).attribute(x.clone().requires_grad_(True), target=chosen,
                                           abs=True).amax(dim=1)
    else:
        from captum.attr import IntegratedGradients

        # Baseline: a black film, i.e. grey 0 after the card's normalisation.
        baseline = torch.full_like(x, -loaded.card.mean / loaded.card.std)
        ig = IntegratedGradients(forward).attribute(
            x, baselines=baseline, target=chosen, n_steps=steps,
            internal_batch_size=max(1, x.shape[0]) * 4)
        maps = ig.abs().sum(dim=1)
    heat = _normalise(maps)
    return [Attribution(heat[i], head, spec.labels[int(chosen[i])],
                        float(probs[i, int(chosen[i])])) for i in range(x.shape[0])]


def write_overlay(path: Path, image: NDArray[np.floating], attribution: Attribution,
                  *, alpha: float = 0.6) -> Path:
    """Write ``image`` (grey [0, 1], any size) with the heatmap over it and a caption.

    The heatmap is resized to the image: the model saw the film squeezed to a
    square (or two squares side by side), so stretching back maps it onto
    the same anatomy.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw
    from scipy.ndimage import gaussian_filter

    grey = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    h, w = grey.shape
    heat = np.asarray(Image.fromarray(attribution.heatmap).resize((w, h),
                                                                   Image.Resampling.BILINEAR))
    # Pixel attributions are sparse: a few pixels hold the maximum. For the eye,
    # spread them a little and scale to the 99.5th percentile so regions show.
    heat = gaussian_filter(heat, sigma=max(1.0, 0.006 * max(h, w)))
    top = float(np.percentile(heat, 99.5))
    heat = np.clip(heat / top, 0, 1) if top > 0 else heat
    colour = colormaps["inferno"](np.clip(heat, 0, 1))[..., :3]
    weight = alpha * heat[..., None]  # cold regions keep the radiograph visible
    rgb = (1 - weight) * grey[..., None] + weight * colour
    canvas = Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")
    caption = f"{attribution.head}: {attribution.label} ({attribution.probability:.2f})"
    draw = ImageDraw.Draw(canvas)
    box = draw.textbbox((4, 4), caption)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((4, 4), caption, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.save(tmp, "PNG")
    tmp.replace(path)
    return path
