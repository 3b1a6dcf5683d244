"""Encoders: the multi-scale contract, strict local weights, and offline ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from conftest import SHARED
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders import encoders as smp_encoder_table
from torch import nn

from seg.errors import PretrainedWeightsNotFoundError
from seg.models.encoders import MobileNetV2Encoder, smp_encoder

MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_035_imagenet_features.pth"
needs_weights = pytest.mark.skipif(
    not MOBILENET_WEIGHTS.is_file(), reason="shared MobileNetV2 weights not present"
)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_mobilenet_contract(depth: int) -> None:
    enc = MobileNetV2Encoder(depth=depth)
    assert enc.out_channels == (3, 8, 8, 16, 32, 1280)[: depth + 1]
    assert enc.output_stride == 2**depth
    feats = enc(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // 2**i, 96 // 2**i) for i, c in enumerate(enc.out_channels)
    ]
    assert all(m.eps == 1e-3 for m in enc.modules() if isinstance(m, nn.BatchNorm2d))


def test_mobilenet_rejects_bad_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        MobileNetV2Encoder(depth=6)


@needs_weights
def test_mobilenet_shared_weights_load_strictly_and_change_features() -> None:
    state = torch.load(MOBILENET_WEIGHTS, weights_only=True)
    torch.manual_seed(0)
    pretrained = MobileNetV2Encoder(weights=MOBILENET_WEIGHTS).eval()
    loaded = pretrained.features.state_dict()
    assert loaded.keys() == {k[len("features.") :] for k in state}
    assert all(torch.equal(v, state["features." + k]) for k, v in loaded.items())
    # ImageNet BN statistics, not the fresh (mean 0, var 1) ones.
    assert not torch.allclose(pretrained.features[0][1].running_var, torch.ones(16))
    torch.manual_seed(0)
    random = MobileNetV2Encoder().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deep_pre, deep_rand = pretrained(x)[-1], random(x)[-1]
    assert torch.isfinite(deep_pre).all()
    assert (deep_pre - deep_rand).abs().mean() > 0.1 * deep_rand.abs().mean()


@needs_weights
def test_mobilenet_shallow_encoder_takes_its_part_of_the_weights() -> None:
    enc = MobileNetV2Encoder(weights=MOBILENET_WEIGHTS, depth=3)
    state = torch.load(MOBILENET_WEIGHTS, weights_only=True)
    torch.testing.assert_close(
        enc.features[6].conv[0][0].weight, state["features.6.conv.0.0.weight"]
    )


def test_mobilenet_mismatched_weights_raise(tmp_path: Path) -> None:
    state = {"features." + k: v for k, v in MobileNetV2Encoder().features.state_dict().items()}
    state["features.0.0.weight_typo"] = state.pop("features.0.0.weight")
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['0\.0\.weight'\]"):
        MobileNetV2Encoder(weights=path)
    wide = {"features." + k: v for k, v in MobileNetV2Encoder(1.0).features.state_dict().items()}
    torch.save(wide, path)
    with pytest.raises(ValueError, match="size mismatch"):
        MobileNetV2Encoder(weights=path)
    with pytest.raises(PretrainedWeightsNotFoundError, match="not found"):
        MobileNetV2Encoder(weights=tmp_path / "missing.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_smp_encoder_local_file_roundtrip(tmp_path: Path, suffix: str) -> None:
    source = smp_encoder("resnet18")
    state = dict(source.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # torchvision checkpoints carry a classifier
    path = tmp_path / f"resnet18{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = smp_encoder("resnet18", weights=str(path))
    assert same_state(source, loaded)
    assert not same_state(source, smp_encoder("resnet18"))
    feats = loaded(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(loaded.out_channels) == [3, 64, 64, 128, 256, 512]


def test_smp_encoder_mismatched_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(smp_encoder("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match="missing keys"):  # resnet18 has fewer blocks
        smp_encoder("resnet18", weights=str(path))


def test_smp_encoder_in_channels_with_weights(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(smp_encoder("resnet18").state_dict(), path)
    enc = smp_encoder("resnet18", weights=str(path), in_channels=4)
    assert enc.conv1.in_channels == 4
    assert enc(torch.randn(2, 4, 64, 64))[-1].shape == (2, 512, 2, 2)


@pytest.fixture
def offline_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache with networking disabled (the test cannot hang)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.timeout(60)
def test_imagenet_weights_offline_raise_with_the_needed_file(offline_hf_cache: Path) -> None:
    revision = smp_encoder_table["resnet34"]["pretrained_settings"]["imagenet"]["revision"]
    expected = (
        offline_hf_cache / "models--smp-hub--resnet34.imagenet" / "snapshots" / revision
    ) / "model.safetensors"
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        smp_encoder("resnet34", weights="imagenet")
    message = str(info.value)
    assert f"https://huggingface.co/smp-hub/resnet34.imagenet/resolve/{revision}" in message
    assert str(expected) in message
    assert "model.net.encoder.weights=" in message


@pytest.mark.timeout(60)
def test_imagenet_weights_read_from_the_cache(offline_hf_cache: Path) -> None:
    settings = smp_encoder_table["resnet18"]["pretrained_settings"]["imagenet"]
    folder = offline_hf_cache / "models--smp-hub--resnet18.imagenet" / "snapshots"
    path = folder / settings["revision"] / "model.safetensors"
    path.parent.mkdir(parents=True)
    source = smp_encoder("resnet18")
    save_file(source.state_dict(), str(path))
    assert same_state(source, smp_encoder("resnet18", weights="imagenet"))


def test_unknown_weights_name_raises() -> None:
    with pytest.raises(PretrainedWeightsNotFoundError, match="neither a file nor one of"):
        smp_encoder("resnet18", weights="imagenet21k-nonexistent")
