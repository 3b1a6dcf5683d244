"""LightningModules on tiny nets and synthetic batches: training, losses, optimizers, configs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from seg.constants import IGNORE_INDEX
from seg.modules.localization import LocalizationModule
from seg.modules.optim import build_optimization, param_groups, warmup_poly
from seg.modules.segmentation import SegmentationModule

CONF = Path(__file__).resolve().parents[1] / "conf"
SGD = partial(torch.optim.SGD, lr=0.1, momentum=0.9)


class TinyNet(nn.Module):
    """(B, 3, H, W) -> (B, C, H, W) with an ``encoder`` (conv + BN) and a 1x1 head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class AuxNet(TinyNet):
    """Returns {"out": (B, C, H, W), "aux": (B, C, H/2, W/2)} like torchvision's models."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        return {"out": out, "aux": F.avg_pool2d(out, 2) * 2}


class TinyLocNet(nn.Module):
    """(B, 3, H, W) -> {"cls": (B, 20), "box": (B, 4) in [0, 1]}."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.cls = nn.Linear(8, 20)
        self.box = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.encoder(x).mean(dim=(2, 3))  # (B, 8)
        return {"cls": self.cls(f), "box": self.box(f).sigmoid()}


def seg_batches(n: int = 2, h: int = 32, w: int = 40) -> list[dict]:
    """Images whose pixel colour gives the label (3 classes) and a 255 strip on top."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 3, (n, h // 8, w // 8), generator=gen)
    mask = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (n, h, w)
    palette = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    image = palette[mask].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, h, w, generator=gen)
    mask[:, :3] = IGNORE_INDEX
    return [{"image": image[i], "mask": mask[i], "id": f"img{i}"} for i in range(n)]


def loc_batches(n: int = 4) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(3, 24, 24, generator=gen),
            "label": torch.tensor(i % 20 + 1),
            "box": torch.tensor([0.1, 0.2, 0.5, 0.4]),
            "id": f"img{i}",
        }
        for i in range(n)
    ]


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**(defaults | kwargs))


def test_overfit_one_batch_drives_miou_up() -> None:
    torch.manual_seed(0)
    loader = DataLoader(seg_batches(), batch_size=2)
    module = SegmentationModule(
        TinyNet(), optimizer=partial(torch.optim.Adam, lr=0.05), num_classes=3, dice_weight=0.5
    )
    before = trainer().validate(module, loader, verbose=False)[0]["val/mIoU"]
    trainer(max_steps=60, overfit_batches=1).fit(module, loader)
    after = trainer().validate(module, loader, verbose=False)[0]["val/mIoU"]
    assert after > 0.9 and after > before + 0.3
    assert module.scores["val"]["per_class_IoU"].shape == (3,)
    conv = module.net.encoder[0].weight  # (8, 3, 3, 3)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_ignored_pixels_do_not_change_loss_or_get_gradient() -> None:
    module = SegmentationModule(TinyNet(), num_classes=3, dice_weight=0.5, lovasz_weight=0.5)
    mask = torch.stack([b["mask"] for b in seg_batches()])  # (2, 32, 40)
    logits = torch.randn(2, 3, 32, 40, requires_grad=True)
    terms = module.loss(logits, {"mask": mask})
    assert set(terms) == {"ce", "dice", "lovasz", "loss"}
    terms["loss"].backward()
    ignored = (mask == IGNORE_INDEX).unsqueeze(1).expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0 and logits.grad[~ignored].abs().max() > 0
    changed = logits.detach().clone()
    changed[ignored] = 100 * torch.randn(int(ignored.sum()))
    assert module.loss(changed, {"mask": mask})["loss"].item() == pytest.approx(
        terms["loss"].item()
    )


def test_dice_and_lovasz_work_under_bf16_autocast() -> None:
    """The default precision on this CPU is bf16-mixed: the losses must not mix dtypes."""
    module = SegmentationModule(TinyNet(), num_classes=3, dice_weight=0.5, lovasz_weight=0.5)
    batch = {"mask": torch.stack([b["mask"] for b in seg_batches()])}
    logits = torch.randn(2, 3, 32, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = module.loss(logits.bfloat16(), batch)
    assert terms["lovasz"].dtype == torch.float32 and torch.isfinite(terms["loss"])


def test_class_weights_match_weighted_cross_entropy() -> None:
    weights = OmegaConf.create([1.0, 0.0, 2.0])  # what Hydra passes
    module = SegmentationModule(TinyNet(), num_classes=3, class_weights=weights)
    mask = torch.stack([b["mask"] for b in seg_batches()])
    logits = torch.randn(2, 3, 32, 40)
    expected = F.cross_entropy(logits, mask, weight=torch.tensor([1.0, 0.0, 2.0]), ignore_index=255)
    loss = module.loss(logits, {"mask": mask})["loss"]
    assert loss.item() == pytest.approx(expected.item())
    assert loss.item() != pytest.approx(F.cross_entropy(logits, mask, ignore_index=255).item())
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationModule(TinyNet(), num_classes=3, class_weights=[1.0, 2.0])


def test_aux_loss() -> None:
    module = SegmentationModule(AuxNet(), num_classes=3, aux_weight=0.4)
    mask = torch.stack([b["mask"] for b in seg_batches()])
    out = AuxNet()(torch.stack([b["image"] for b in seg_batches()]))
    aux = F.interpolate(out["aux"], size=(32, 40), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(out["out"], mask, ignore_index=255) + 0.4 * F.cross_entropy(
        aux, mask, ignore_index=255
    )
    assert module.loss(out, {"mask": mask})["loss"].item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="aux"):
        SegmentationModule(TinyNet(), num_classes=3, aux_weight=0.4).loss(
            out["out"], {"mask": mask}
        )


class LrRecorder(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.encoder_training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])
        self.encoder_training.append(pl_module.net.encoder.training)


def test_freeze_encoder_keeps_encoder_and_bn_fixed() -> None:
    module = SegmentationModule(TinyNet(), optimizer=SGD, num_classes=3, freeze_encoder=True)
    encoder = {k: v.clone() for k, v in module.net.encoder.state_dict().items()}
    head = module.net.head.weight.detach().clone()
    recorder = LrRecorder()
    run = trainer(max_steps=3, callbacks=[recorder])
    run.fit(module, DataLoader(seg_batches(), batch_size=2))
    assert all(not p.requires_grad for p in module.net.encoder.parameters())
    for key, value in module.net.encoder.state_dict().items():  # weights and BN statistics
        assert torch.equal(value, encoder[key]), key
    assert not torch.equal(module.net.head.weight, head)
    assert recorder.encoder_training == [False] * 3
    module.train()
    assert not module.net.encoder.training and module.net.head.training
    groups = run.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["head"]


def test_encoder_lr_mult_gives_two_groups() -> None:
    module = SegmentationModule(TinyNet(), optimizer=SGD, num_classes=3, encoder_lr_mult=0.1)
    opt = module.configure_optimizers()["optimizer"]
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("encoder", pytest.approx(0.01)),
        ("head", 0.1),
    ]
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(module.net.parameters()))


def test_net_without_encoder() -> None:
    net = nn.Conv2d(3, 3, 1)
    assert [g["name"] for g in param_groups(net, 0.1)] == ["net"]
    for kwargs in ({"freeze_encoder": True}, {"encoder_lr_mult": 0.1}):
        with pytest.raises(ValueError, match="encoder"):
            SegmentationModule(net, **kwargs)


def test_poly_scheduler_decays_per_step_to_zero() -> None:
    poly = partial(torch.optim.lr_scheduler.PolynomialLR, power=0.9)
    module = SegmentationModule(
        TinyNet(), optimizer=SGD, scheduler=poly, num_classes=3, encoder_lr_mult=0.5
    )
    recorder = LrRecorder()
    run = trainer(max_steps=10, callbacks=[recorder])
    run.fit(module, DataLoader(seg_batches(), batch_size=1))  # 2 steps per epoch, 5 epochs
    head = [lrs[1] for lrs in recorder.lrs]
    assert head == pytest.approx([0.1 * (1 - t / 10) ** 0.9 for t in range(10)])
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx([h / 2 for h in head])
    assert run.optimizers[0].param_groups[1]["lr"] == pytest.approx(0.0)


def test_no_scheduler() -> None:
    for scheduler in (None, OmegaConf.create({})):
        module = SegmentationModule(TinyNet(), optimizer=SGD, scheduler=scheduler)
        assert set(module.configure_optimizers()) == {"optimizer"}
    with pytest.raises(ValueError, match="optimizer"):
        SegmentationModule(TinyNet()).configure_optimizers()
    with pytest.raises(ValueError, match="scheduler_interval"):
        SegmentationModule(TinyNet(), scheduler_interval="batch")


def test_warmup_poly() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_poly(opt, total_iters=40, warmup_fraction=0.1, start_factor=0.1)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    assert lrs[4:] == pytest.approx([(1 - t / 36) ** 0.9 for t in range(36)])
    one_step = warmup_poly(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 1)
    assert isinstance(one_step, torch.optim.lr_scheduler.PolynomialLR)  # fast_dev_run: no warm-up


@pytest.mark.parametrize("name", ["poly", "warmup_poly", "cosine"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_hydra_configs_build_and_decay(name: str, optimizer: str) -> None:
    opt_cfg = hydra.utils.instantiate(OmegaConf.load(CONF / "optimizer" / f"{optimizer}.yaml"))
    sched_cfg = hydra.utils.instantiate(OmegaConf.load(CONF / "scheduler" / f"{name}.yaml"))
    out = build_optimization(TinyNet(), opt_cfg, sched_cfg, 0.1, lambda: 100, "step")
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    base = opt_cfg.keywords["lr"]
    assert opt.param_groups[1]["lr"] <= base
    for _ in range(99):
        opt.step()
        sched.step()
    assert 0 <= opt.param_groups[1]["lr"] < 0.05 * base  # (1/100) ** 0.9 = 0.016 for poly
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * opt.param_groups[1]["lr"])


def test_scheduler_none_config_sets_null(tmp_path: Path) -> None:
    (tmp_path / "scheduler").mkdir()
    for name in ("poly", "none"):
        src = CONF / "scheduler" / f"{name}.yaml"
        (tmp_path / "scheduler" / f"{name}.yaml").write_text(src.read_text())
    (tmp_path / "main.yaml").write_text("defaults:\n  - _self_\n  - scheduler: poly\n")
    with hydra.initialize_config_dir(str(tmp_path), version_base="1.3"):
        assert hydra.compose("main", overrides=["scheduler=none"]).scheduler is None
        assert hydra.compose("main").scheduler.power == 0.9


def test_checkpoint_loads_weights_only(tmp_path: Path) -> None:
    poly = partial(torch.optim.lr_scheduler.PolynomialLR, power=0.9)
    module = SegmentationModule(
        TinyNet(),
        optimizer=SGD,
        scheduler=poly,
        num_classes=3,
        class_weights=OmegaConf.create([1, 2, 1]),
    )
    run = trainer(max_steps=2)
    loader = DataLoader(seg_batches(), batch_size=2)
    run.fit(module, loader, loader)
    path = tmp_path / "last.ckpt"
    run.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["class_weights"] == [1.0, 2.0, 1.0]
    assert type(ckpt["hyper_parameters"]["class_weights"]) is list
    restored = SegmentationModule.load_from_checkpoint(path, net=TinyNet(), weights_only=True)
    assert torch.equal(restored.net.head.weight, module.net.head.weight)
    assert restored.hparams.num_classes == 3


def test_localization_trains_and_logs() -> None:
    module = LocalizationModule(TinyLocNet(), optimizer=SGD, giou_weight=1.0, encoder_lr_mult=0.1)
    loader = DataLoader(loc_batches(), batch_size=2)
    run = trainer(max_steps=3, callbacks=[LrRecorder()])
    run.fit(module, loader, loader)
    logged = set(run.callback_metrics)
    assert {"val/mean_IoU", "val/CorLoc", "val/loc_acc", "val/cls_acc", "val/loss"} <= logged
    assert {"train/loss_step", "val/loss_giou", "val/loss_smooth_l1"} <= logged
    assert 0 <= module.scores["val"]["mean_IoU"] <= 1


def test_localization_loss_label_offset_and_perfect_box() -> None:
    module = LocalizationModule(TinyLocNet(), giou_weight=1.0)
    batch = {"label": torch.tensor([1, 20]), "box": torch.tensor([[0.1, 0.2, 0.5, 0.4]] * 2)}
    logits = torch.randn(2, 20)
    terms = module.loss({"cls": logits, "box": batch["box"].clone()}, batch)
    assert terms["cls"].item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 19])).item()
    )
    assert terms["smooth_l1"].item() == 0.0
    assert terms["giou"].item() == pytest.approx(0.0, abs=1e-6)
    offset0 = LocalizationModule(TinyLocNet(), label_offset=0)  # logits include the background
    terms = offset0.loss(
        {"cls": logits, "box": batch["box"].clone()}, {**batch, "label": torch.tensor([1, 19])}
    )
    assert terms["cls"].item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([1, 19])).item()
    )
    with pytest.raises(ValueError, match="mask"):
        LocalizationModule(TinyLocNet(), seg_weight=1.0).loss({"cls": logits, **batch}, batch)


def test_epoch_interval_scheduler_steps_per_epoch() -> None:
    poly = partial(torch.optim.lr_scheduler.PolynomialLR, power=1.0)
    module = SegmentationModule(
        TinyNet(), optimizer=SGD, scheduler=poly, num_classes=3, scheduler_interval="epoch"
    )
    recorder = LrRecorder()
    trainer(max_epochs=4, callbacks=[recorder]).fit(module, DataLoader(seg_batches(), batch_size=1))
    lrs = [head for _, head in recorder.lrs]  # 2 steps per epoch
    assert lrs == pytest.approx([0.1, 0.1, 0.075, 0.075, 0.05, 0.05, 0.025, 0.025])


@pytest.mark.slow
def test_ddp_validation_equals_single_process() -> None:
    loader = DataLoader(seg_batches(n=4), batch_size=1)
    module = SegmentationModule(TinyNet(), num_classes=3)
    single = trainer().validate(module, loader, verbose=False)[0]
    run = trainer(strategy="ddp_spawn", devices=2)
    ddp = run.validate(module, loader, verbose=False)[0]
    for key in ("val/mIoU", "val/pixel_accuracy", "val/mean_accuracy", "val/fw_IoU"):
        assert ddp[key] == pytest.approx(single[key]), key
