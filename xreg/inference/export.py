"""``xreg weights export``: a checkpoint as an ONNX model that carries its card.

The network is exported in eval mode (torch's exporter folds each batch norm
into the convolution before it), with a dynamic batch dimension and one
output per head, named as the card's heads, then an ensemble's extra outputs
(:func:`xreg.model.card.extra_outputs`: members' logits, feature distance).
The ONNX metadata holds the card (JSON) and the sha256 of the checkpoint, so
the sort can check that an export beside a ``.pt`` was made from exactly those
bytes. Before the file is kept, ONNX Runtime must reproduce torch's logits on a
few inputs to within ``tolerance``. Needs torch and onnx (``pip install "xreg[train]"``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from xreg.errors import CheckpointError, ConfigError
from xreg.inference.runtime import CARD_KEY, SHA_KEY, onnx_path
from xreg.model.card import extra_outputs

__all__ = ["OPSET", "export_onnx"]

#: ONNX opset: supported by every onnxruntime the pyproject admits (>= 1.17).
OPSET = 17
FORMAT_KEY = "xreg.format"
FORMAT = "xreg-onnx-1"


def export_onnx(checkpoint: Path, out: Path | None = None, *,
                tolerance: float = 1e-4) -> tuple[Path, float]:
    """Export ``checkpoint`` to ``out`` (default: beside it, ``.onnx``).

    Returns the path and the largest logit difference torch vs ONNX Runtime
    measured on random inputs (relative to the largest logit, when that is
    above 1); raises ``CheckpointError`` above ``tolerance``.
    """
    try:
        import onnx
        import torch
    except ImportError as exc:
        raise ConfigError(f'exporting needs torch and onnx: pip install "xreg[train]" '
                          f"({exc.name} is missing)") from None
    from xreg.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    card = loaded.card
    target = Path(out) if out is not None else onnx_path(checkpoint)
    heads = [h.name for h in card.heads] + list(extra_outputs(card))
    width = card.input_size * card.views
    net = _heads_as_tuple(loaded.model.eval(), heads)
    example = torch.randn(2, 3, card.input_size, width)
    tmp = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its future
        torch.onnx.export(net, (example,), str(tmp), input_names=["input"],
                          output_names=heads, opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input": {0: "batch"},
                                        **{h: {0: "batch"} for h in heads}})
    model = onnx.load(str(tmp))
    for key, value in ((CARD_KEY, json.dumps(card.to_dict(), sort_keys=True)),
                       (SHA_KEY, loaded.sha256), (FORMAT_KEY, FORMAT)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"xreg model {card.name}; see its card in the metadata ({CARD_KEY})"
    onnx.save(model, str(tmp))
    try:
        worst = _check(tmp, net, card.input_size, width, heads)
        if worst > tolerance:
            raise CheckpointError(f"the export differs from torch by {worst:.2e} "
                                  f"(> {tolerance:g}); not written")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target, worst


def _heads_as_tuple(net: Any, heads: list[str]) -> Any:
    """The network with its dict of logits as a tuple, in the card's head order."""
    import torch

    class HeadsAsTuple(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.net(x)
            return tuple(out[h] for h in heads)

    return HeadsAsTuple().eval()


def _check(path: Path, net: Any, size: int, width: int, heads: list[str]) -> float:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch in (1, 5):
        x = rng.standard_normal((batch, 3, size, width)).astype(np.float32)
        got = session.run(heads, {"input": x})
        with torch.inference_mode():
            want = net(torch.from_numpy(x))
        # Relative to the logits' scale (at least 1): float32 rounding grows with it, and
        # random inputs can drive a model whose statistics came from films to large logits.
        worst = max(worst, *(float(np.abs(g - w.numpy()).max())
                             / max(1.0, float(np.abs(w.numpy()).max()))
                             for g, w in zip(got, want)))
    return worst
