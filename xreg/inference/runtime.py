"""Runtimes behind one small interface: a batch of preprocessed films in, logits out.

:func:`load_model` turns ``--weights`` and ``--runtime`` into a
:class:`Model`: the card, the checkpoint's sha256 (the same whichever
runtime answers, so the registry names the model, not the engine) and a
runtime. ``auto`` takes ONNX Runtime when it is installed and the
checkpoint has an export beside it (``W.onnx`` next to ``W.pt``, made by
``xreg weights export``) whose recorded sha256 is the checkpoint's; else
PyTorch. An ``.onnx`` file given directly needs no PyTorch at all.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from xreg.errors import CheckpointError, ConfigError
from xreg.hashing import file_sha256
from xreg.model.card import ModelCard, extra_outputs

if TYPE_CHECKING:
    import torch

    from xreg.model.checkpoint import LoadedModel

__all__ = ["CARD_KEY", "RUNTIMES", "SHA_KEY", "Model", "OnnxRuntime", "Runtime",
           "TorchRuntime", "as_model", "inference_model", "load_model", "onnx_path",
           "resolve_device"]

RUNTIMES = ("auto", "onnx", "torch")
#: ONNX metadata keys: the model card (JSON) and the sha256 of the source checkpoint.
CARD_KEY = "xreg.card"
SHA_KEY = "xreg.checkpoint_sha256"
TRAIN_EXTRA = 'pip install "xreg[train]"'


class Runtime(Protocol):
    """Logits per head for a ``(B, 3, H, W)`` float32 batch."""

    name: str
    version: str

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Model:
    """A model ready to predict: its card, checkpoint sha256, file and runtime."""

    card: ModelCard
    sha256: str
    path: Path
    runtime: Runtime

    @property
    def runtime_label(self) -> str:
        """E.g. ``onnxruntime 1.32.0`` (what a run row records)."""
        return f"{self.runtime.name} {self.runtime.version}"


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def inference_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """An eval-mode copy of ``model`` made faster for inference, same outputs.

    Batch norms are folded into the convolutions before them (torch.fx), and
    weights use channels_last: together about 1.5x (BN folding) times 1.5x
    (oneDNN channels_last) on a 2-core CPU for MobileNets. A model that FX
    cannot trace runs unfused.
    """
    import torch
    from torch.fx.experimental.optimization import fuse

    model = model.eval()
    try:
        model = fuse(model)
    except Exception:  # noqa: BLE001 - tracing is an optimisation, never a requirement
        pass
    return model.to(device).to(memory_format=torch.channels_last).eval()


class TorchRuntime:
    """PyTorch, with the network made faster by :func:`inference_model`."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        import torch

        self.version = str(torch.__version__)
        self.device = device
        self.model = inference_model(model, device)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        batch = batch.to(self.device, memory_format=torch.channels_last)
        with torch.inference_mode():
            logits = self.model(batch)
        return {k: v.float().cpu().numpy() for k, v in logits.items()}


class OnnxRuntime:
    """ONNX Runtime on an exported model (CPU, or CUDA where its provider is installed)."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        self.version = ort.__version__
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spin-waiting between batches: the decode threads need those cores
        # (measured: JPEG sort 101 -> 107-110 img/s on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device in ("cuda", "auto") and "CUDAExecutionProvider" in \
                ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise ConfigError("--device cuda with ONNX Runtime needs onnxruntime-gpu "
                              "(its CUDA provider is not installed)")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {self.input: np.ascontiguousarray(
            x, np.float32)})
        return dict(zip(self.outputs, values))


def onnx_path(checkpoint: Path) -> Path:
    """Where the ONNX export of ``checkpoint`` lives: beside it, ``.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


def read_onnx_metadata(path: Path) -> tuple[ModelCard, str]:
    """(card, checkpoint sha256) recorded in an xreg ONNX export."""
    import onnxruntime as ort

    try:
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
            .get_modelmeta().custom_metadata_map
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types for bad files
        raise CheckpointError(f"{path} is not a readable ONNX model ({exc})") from None
    return _card_from_meta(meta, path)


def _card_from_meta(meta: Mapping[str, str], path: Path) -> tuple[ModelCard, str]:
    if CARD_KEY not in meta or SHA_KEY not in meta:
        raise CheckpointError(f"{path} is not an xreg export (no model card in its "
                              "metadata); export it with `xreg weights export`")
    try:
        card = ModelCard.from_dict(json.loads(meta[CARD_KEY]))
    except ValueError as exc:
        raise CheckpointError(f"{path}: its model card is not JSON ({exc})") from None
    return card, meta[SHA_KEY]


def _onnx_model(path: Path, device: str, threads: int) -> Model:
    runtime = OnnxRuntime(path, device, threads)
    card, sha = _card_from_meta(runtime.session.get_modelmeta().custom_metadata_map, path)
    heads = [h.name for h in card.heads] + list(extra_outputs(card))
    if runtime.outputs != heads:
        raise CheckpointError(f"{path}: outputs {runtime.outputs} do not match the card's "
                              f"heads and extra outputs {heads}")
    return Model(card, sha, path, runtime)


def _matching_export(checkpoint: Path, device: str, threads: int) -> Model | None:
    """The checkpoint's ONNX export, if there is one made from exactly these bytes."""
    candidate = onnx_path(checkpoint)
    if not candidate.is_file():
        return None
    model = _onnx_model(candidate, device, threads)
    return model if model.sha256 == file_sha256(checkpoint) else None


def load_model(weights: Path, *, runtime: str = "auto", device: str = "cpu",
               threads: int = 0) -> Model:
    """The model of ``weights`` (``.pt`` or ``.onnx``) on the runtime asked for.

    Raises ``ConfigError`` saying what to install or export when the runtime
    cannot be had.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    weights = Path(weights)
    if not weights.is_file():
        raise ConfigError(f"no model weights at {weights}")
    if weights.suffix == ".onnx":
        if runtime == "torch":
            raise ConfigError(f"{weights} is an ONNX export; --runtime torch needs the .pt")
        if not has_onnxruntime():
            raise ConfigError(f"{weights} needs ONNX Runtime: pip install onnxruntime")
        return _onnx_model(weights, device, threads)
    if runtime != "torch" and has_onnxruntime():
        export = _matching_export(weights, device, threads)
        if export is not None:
            return export
    if runtime == "onnx":
        why = "ONNX Runtime is not installed" if not has_onnxruntime() else \
            f"{weights} has no ONNX export made from it beside it"
        raise ConfigError(f"--runtime onnx: {why} (run `xreg weights export {weights}`)")
    if not has_torch():
        raise ConfigError(f"{weights} needs PyTorch ({TRAIN_EXTRA}) or its ONNX export "
                          f"beside it ({onnx_path(weights).name})")
    from xreg.model.checkpoint import load_checkpoint

    return as_model(load_checkpoint(weights), device)


def as_model(model: Model | LoadedModel, device: Any = None) -> Model:
    """A :class:`Model`; a torch :class:`~xreg.model.checkpoint.LoadedModel` gets the torch runtime.

    ``device`` (a name or a ``torch.device``) applies to a LoadedModel only.
    """
    if isinstance(model, Model):
        return model
    target = resolve_device(device if isinstance(device, str) else "cpu") \
        if device is None or isinstance(device, str) else device
    return Model(model.card, model.sha256, model.path, TorchRuntime(model.model, target))
