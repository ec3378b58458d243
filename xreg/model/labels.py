"""Labels, heads and architecture names: what a model card speaks of, without PyTorch.

The sort path (ONNX Runtime) reads cards and decides folders with these
alone; :mod:`xreg.model.models` builds networks from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xreg.errors import ConfigError

__all__ = [
    "ARCH_NAMES", "BODY_PARTS", "BODY_PART_HEAD", "EXTENDED_BODY_PARTS", "FRACTURE_HEAD",
    "INSTRUMENT_HEAD", "INSTRUMENT_LABELS", "KNOWN_HEADS", "LONG_BONES", "OTHER",
    "STANDARD_HEADS", "TORCH_RESERVED", "VIEW_HEAD", "VIEW_LABELS", "HeadSpec",
]

#: Backbones :mod:`xreg.model.models` can build (a test keeps the two lists equal).
ARCH_NAMES: tuple[str, ...] = (
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0",
    "resnet18", "resnet50", "resnet101", "vit_b_16", "efficientnet_lite0",
)
#: Attribute names of torch's ``nn.ModuleDict`` a head may not take (a head's name is a
#: ModuleDict key); a test checks torch adds none.
TORCH_RESERVED: frozenset[str] = frozenset({
    "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "clear",
    "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float",
    "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half",
    "ipu", "items", "keys", "load_state_dict", "modules", "mtia", "named_buffers",
    "named_children", "named_modules", "named_parameters", "parameters", "pop",
    "register_backward_hook", "register_buffer", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
    "set_extra_state", "set_submodule", "share_memory", "state_dict", "to", "to_empty",
    "train", "training", "type", "update", "values", "xpu", "zero_grad",
})

BODY_PARTS: tuple[str, ...] = (
    "ankle", "elbow", "foot", "hand", "hip", "knee", "shoulder", "spine", "wrist",
)
#: Long-bone exams (no single joint centred): their own folders, never one of the nine.
LONG_BONES: tuple[str, ...] = ("forearm", "humerus", "lower_leg", "femur")
#: Not a musculoskeletal film of any class above (chest, several regions, non-MSK).
OTHER = "other"
#: The body-part head of models that know what lies beyond the thesis's nine.
EXTENDED_BODY_PARTS: tuple[str, ...] = (*BODY_PARTS, *LONG_BONES, OTHER)
INSTRUMENT_LABELS: tuple[str, ...] = ("no_instrument", "instrument")
VIEW_LABELS: tuple[str, ...] = ("AP", "LAT")  # frontal (AP/PA) or lateral projection

# Head names become nn.ModuleDict keys and state-dict key parts, so they must
# be plain identifiers (no dots) that do not shadow nn.Module attributes.
_HEAD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class HeadSpec:
    """One classification head: its name and its class labels, in logit order.

    Every head outputs ``len(labels)`` logits, binary heads included, so the
    prediction layer treats all heads alike (softmax over the last axis).
    """

    name: str
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _HEAD_NAME.match(self.name):
            raise ConfigError(
                f"head name {self.name!r} must be lower-case letters, digits, '_'"
            )
        if self.name in TORCH_RESERVED:
            raise ConfigError(f"head name {self.name!r} is reserved by torch")
        # Accept lists from callers but store a tuple so the spec stays hashable.
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if len(labels) < 2:
            raise ConfigError(f"head {self.name!r} needs at least 2 labels")
        if not all(isinstance(label, str) and label for label in labels):
            raise ConfigError(f"head {self.name!r}: labels must be non-empty strings")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"head {self.name!r}: duplicate labels in {labels}")


BODY_PART_HEAD = HeadSpec("body_part", BODY_PARTS)
INSTRUMENT_HEAD = HeadSpec("instrument", INSTRUMENT_LABELS)
STANDARD_HEADS: tuple[HeadSpec, ...] = (BODY_PART_HEAD, INSTRUMENT_HEAD)
#: Optional third head: the projection, which pairs hip views when headers are silent.
VIEW_HEAD = HeadSpec("view", VIEW_LABELS)
#: The hip model's one head (an AP and a lateral film joined side by side), and
#: the single-film fracture head of body-part models.
FRACTURE_HEAD = HeadSpec("fracture", ("no_fracture", "fracture"))
KNOWN_HEADS: dict[str, HeadSpec] = {
    h.name: h for h in (*STANDARD_HEADS, VIEW_HEAD, FRACTURE_HEAD)}
