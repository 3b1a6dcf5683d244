"""What the papers' recipes need beyond the nets (issue 12): the FCN reference's summed loss and
its learning-rate conversion, at-once skip scaling, stage-to-stage loading, the dilation
network's frozen front end, Caffe's bias learning rates, U-Net's He initialisation and elastic
deformation. The recipes themselves run on real photos in tests/test_voc_mini_recipes.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import cv2
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONF, compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from seg.callbacks import LoadWeights
from seg.constants import IGNORE_INDEX
from seg.errors import CheckpointError, ConfigError
from seg.models.fcn import FCN
from seg.models.unet import UNet
from seg.modules.optim import param_groups
from seg.modules.segmentation import SegmentationModule
from seg.train import build_module


class TinyEncoder(nn.Module):
    """A 3-level conv encoder with FCN's feature strides 8, 16 and 32."""

    out_channels = (4, 6, 8)

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(c, d, 3, padding=1) for c, d in [(3, 4), (4, 6), (6, 8)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.convs[0](F.avg_pool2d(x, 8))]  # (B, 4, H/8, W/8)
        for conv in self.convs[1:]:
            features.append(conv(F.avg_pool2d(features[-1], 2)))  # (B, C, H/2^k, W/2^k)
        return features


def fcn(stride: int, skip_scales: list[float] | None = None, **kwargs) -> SegmentationModule:
    """A SegmentationModule (``kwargs``) on an FCN with a tiny encoder."""
    torch.manual_seed(stride)
    net = FCN(output_stride=stride, encoder=TinyEncoder(), skip_scales=skip_scales)
    return SegmentationModule(net, **kwargs)


def labelled_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 24, 32) images and masks with a different number of ignored pixels per image."""
    gen = torch.Generator().manual_seed(n)
    image = torch.randn(n, 3, 24, 32, generator=gen)
    mask = torch.randint(0, 21, (n, 24, 32), generator=gen)
    for i in range(n):
        mask[i, : 3 + 5 * i] = IGNORE_INDEX
    return image, mask


@pytest.mark.parametrize("n", [1, 2])
def test_summed_loss_step_equals_mean_loss_step_at_lr_times_labelled_pixels(n: int) -> None:
    """The conversion written in conf/experiment/fcn32s_voc.yaml: SGD on the per-image summed
    loss at lr η moves the weights as SGD on the mean loss at lr η * N_labelled / n images."""
    image, mask = labelled_batch(n)
    labelled = int((mask != IGNORE_INDEX).sum())
    eta, steps = 1e-6, {}
    for reduction, lr in (("sum", eta), ("mean", eta * labelled / n)):
        module = fcn(8, loss_reduction=reduction)
        for layer in (module.net.score, *module.net.score_skips):
            nn.init.normal_(layer.weight, 0.0, 0.1)  # non-zero scores: every layer gets gradient
        before = {k: v.clone() for k, v in module.net.state_dict().items()}
        opt = torch.optim.SGD(module.net.parameters(), lr=lr)  # no weight decay, no momentum
        module.loss(module.net(image), {"mask": mask})["loss"].backward()
        opt.step()
        steps[reduction] = {k: v - before[k] for k, v in module.net.state_dict().items()}
    moved = [k for k, v in steps["sum"].items() if v.abs().max() > 0]
    assert {"score.weight", "encoder.convs.0.weight", "score_skips.1.weight"} <= set(moved)
    for key in moved:
        torch.testing.assert_close(steps["mean"][key], steps["sum"][key], rtol=1e-4, atol=1e-12)


def test_loss_reduction_is_checked() -> None:
    with pytest.raises(ConfigError, match="loss_reduction"):
        fcn(32, loss_reduction="none")


def test_skip_scales_scale_the_skip_features_only() -> None:
    """Scaling pool4 by 0.01 and pool3 by 1e-4 equals scaling their score weights instead."""
    scaled = fcn(8, skip_scales=[0.01, 1e-4]).net.eval()
    plain = fcn(8).net.eval()
    for layer in scaled.score_skips:
        nn.init.normal_(layer.weight)
        nn.init.normal_(layer.bias)
    plain.load_state_dict(scaled.state_dict())
    for layer, scaled_layer, factor in zip(
        plain.score_skips, scaled.score_skips, (0.01, 1e-4), strict=True
    ):
        layer.weight.data = scaled_layer.weight.data * factor
        layer.bias.data = scaled_layer.bias.data.clone()
    x = torch.randn(2, 3, 64, 96)
    torch.testing.assert_close(scaled(x), plain(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="skip_scales needs 1"):
        FCN(output_stride=16, encoder=TinyEncoder(), skip_scales=[0.01, 1e-4])


def checkpoint(module: L.LightningModule, path) -> str:
    torch.save({"state_dict": module.state_dict(), "seg_config": {}}, path)
    return str(path)


NO_RESUME = SimpleNamespace(ckpt_path=None)
NEW_FCN_LAYERS = ["score_skips.", "upsample2."]


def test_fcn16s_starts_from_fcn32s(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    coarse, fine = fcn(32), fcn(16)
    nn.init.normal_(coarse.net.score.weight)
    path = checkpoint(coarse, tmp_path / "32s.ckpt")
    upsampler = fine.net.upsample_final.weight.clone()  # 32x32 kernel; the 32s one is 64x64
    with caplog.at_level(logging.INFO, logger="seg.callbacks"):
        LoadWeights(path, allow_new=NEW_FCN_LAYERS).on_fit_start(NO_RESUME, fine)
    own, source = fine.net.state_dict(), coarse.net.state_dict()
    for key in ("encoder.convs.2.weight", "score.weight", "score.bias"):
        assert torch.equal(own[key], source[key]), key
    assert torch.equal(fine.net.upsample_final.weight, upsampler)
    assert not fine.net.score_skips[0].weight.any()  # new score layer: zero (paper Sec. 4.2)
    log = caplog.text
    assert "loaded 8 tensors" in log and "net.upsample_final.weight (21, 1, 64, 64)" in log
    assert (
        "net.score_skips.0.weight (zero)" in log and "net.upsample2.0.weight (initialised)" in log
    )


@pytest.mark.parametrize(
    ("source", "freeze", "allow_new", "message"),
    [
        (8, [], NEW_FCN_LAYERS, "3 weights have no place"),  # a finer net into a coarser one
        (32, [], [], "are not in the checkpoint and are not new layers"),
        (5, [], NEW_FCN_LAYERS, r"net.score.weight is \(5, 8, 1, 1\) .* only fixed"),
        (5, ["score"], NEW_FCN_LAYERS, "only fixed"),  # frozen for the run is not fixed
    ],
)
def test_stage_loading_refuses_anything_else(tmp_path, source, freeze, allow_new, message) -> None:
    """Into FCN-16s: an FCN-8s checkpoint, a 32s one without allow_new, a 5-class 32s one."""
    if source == 5:
        net = FCN(num_classes=5, output_stride=32, encoder=TinyEncoder())
        model = SegmentationModule(net, num_classes=5)
    else:
        model = fcn(source)
    path = checkpoint(model, tmp_path / "source.ckpt")
    target = fcn(16, freeze=freeze)
    with pytest.raises(CheckpointError, match=message) as info:
        LoadWeights(path, allow_new=allow_new).on_fit_start(NO_RESUME, target)
    assert "\n" not in str(info.value) and path in str(info.value)


@pytest.fixture(scope="module")
def dilation_stage2() -> SegmentationModule:
    """experiment=dilation_voc's module (random front end, identity context)."""
    torch.manual_seed(0)
    cfg = compose("train", "experiment=dilation_voc", "frontend_ckpt=unused")
    return build_module(cfg)


def test_dilation_stage2_trains_only_the_context_module(dilation_stage2) -> None:
    module = dilation_stage2
    frontend = {k: v.clone() for k, v in module.net.frontend.state_dict().items()}
    context = {k: v.clone() for k, v in module.net.context.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    batches = [
        {
            "image": torch.randn(3, 32, 40, generator=gen),
            "mask": torch.randint(0, 21, (32, 40), generator=gen),
        }
        for _ in range(4)
    ]
    modes = []
    spy = L.Callback()
    spy.on_train_batch_start = lambda trainer, pl_module, *args: modes.append(  # type: ignore[method-assign]
        (pl_module.net.frontend.training, pl_module.net.context.training)
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[spy],
    )
    trainer.fit(module, DataLoader(batches, batch_size=2))
    assert modes and all(m == (False, True) for m in modes)  # front end in eval mode: no dropout
    for key, value in module.net.frontend.state_dict().items():
        assert torch.equal(value, frontend[key]), key  # classifier included
    assert any(not torch.equal(v, context[k]) for k, v in module.net.context.state_dict().items())
    (optimizer,) = trainer.optimizers
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in module.net.context.parameters()}


def test_freeze_names_submodules() -> None:
    with pytest.raises(ConfigError, match=r"no submodule 'backbone' \(its children"):
        fcn(32, freeze=["backbone"])
    module = fcn(32, freeze=["score"], freeze_encoder=True)
    assert module.frozen == ["score", "encoder"] and module.hparams.freeze == ["score"]
    assert not any(p.requires_grad for p in module.net.encoder.parameters())


def test_caffe_bias_learning_rate_and_decay() -> None:
    net = fcn(32).net
    groups = {
        g["name"]: g for g in param_groups(net, 1e-10, 1.0, bias_lr_mult=2.0, bias_weight_decay=0.0)
    }
    assert set(groups) == {"encoder", "head", "encoder_bias", "head_bias"}
    assert groups["head_bias"]["lr"] == 2e-10 and groups["head_bias"]["weight_decay"] == 0.0
    assert "weight_decay" not in groups["head"] and groups["head"]["lr"] == 1e-10
    assert {id(p) for p in groups["head_bias"]["params"]} == {id(net.score.bias)}
    assert [g["name"] for g in param_groups(net, 0.1)] == ["encoder", "head"]  # default: no split


def test_unet_he_initialisation() -> None:
    """Every conv ~ N(0, sqrt(2/N)), N = inputs of one neuron (paper Sec. 3): 9 * C_in for a 3x3
    conv, C_in for the 2x2 stride-2 up-convolution and the 1x1 head; PyTorch's default is
    sqrt(6) ~ 2.45x smaller."""
    torch.manual_seed(0)
    he, default = UNet(), UNet(he_init=False)
    checked = 0
    for m, d in zip(he.modules(), default.modules(), strict=True):
        if not isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            continue
        c_in, kh, kw = m.in_channels, *m.kernel_size
        n = c_in if isinstance(m, nn.ConvTranspose2d) else c_in * kh * kw
        expected = (2.0 / n) ** 0.5
        assert m.weight.std().item() == pytest.approx(expected, rel=0.05), m
        assert abs(m.weight.mean().item()) < 0.1 * expected
        if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d):
            assert d.weight.std().item() == pytest.approx(expected / 6**0.5, rel=0.05)
        checked += 1
    assert checked == 2 * 9 + 4 + 1  # 18 3x3 convs, 4 up-convolutions, the head


def test_elastic_deformation_moves_the_mask_with_the_image() -> None:
    """conf/augment/voc.yaml's ElasticTransform (on with augment.elastic.p=1, as in
    experiment=unet_voc): displacements of std ~10 px on a 320 crop (paper Sec. 3.1), the mask
    warped with the image, and pixels pulled from outside the crop ignored (255)."""
    node = OmegaConf.load(CONF / "augment" / "voc.yaml")
    node.elastic.p = 1.0
    cfg = OmegaConf.create({"augment": node})
    (spec,) = [t for t in cfg.augment.train.transforms if t._target_.endswith("ElasticTransform")]
    elastic = instantiate(spec)
    elastic.set_random_seed(0)
    size = 320
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    blocks = ((yy // 40) * 8 + xx // 40) % 21  # labels in 40-pixel blocks
    shifts, agree, ignored = [], [], 0
    for _ in range(10):
        out = elastic(image=np.stack([xx, yy, blocks], -1), mask=blocks.astype(np.uint8))
        image, mask = out["image"], out["mask"]
        inner = (slice(60, -60), slice(60, -60))  # away from the fill
        shifts.append(np.concatenate([(image[..., 0] - xx)[inner], (image[..., 1] - yy)[inner]]))
        labelled = mask != IGNORE_INDEX
        agree.append((np.rint(image[..., 2]) == mask)[labelled].mean())
        ignored += int((~labelled).sum())  # pulled in from outside the crop
    std = np.concatenate(shifts).std()
    assert 7 < std < 13, std
    assert np.mean(agree) > 0.95  # labels and pixels moved together (block edges blend)
    assert ignored > 0
    assert elastic.fill_mask == IGNORE_INDEX and elastic.border_mode == cv2.BORDER_CONSTANT
