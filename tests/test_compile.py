"""``model.compile``: training through ``torch.compile`` keeps checkpoints and evaluation eager."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from seg.errors import ConfigError
from seg.models.weights import torch_load
from seg.modules import compile as compile_options
from seg.modules.segmentation import SegmentationModule


def tiny_net() -> nn.Module:
    """(B, 3, H, W) -> (B, 3, H, W) logits: conv, BatchNorm, ReLU, 1x1 head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1)
    )


def batches(n: int = 4) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(3, 16, 16, generator=gen),
            "mask": torch.randint(0, 3, (16, 16), generator=gen),
            "id": f"img{i}",
        }
        for i in range(n)
    ]


class CompiledCheck(L.Callback):
    """Records whether each training step ran through the compiled net."""

    def __init__(self) -> None:
        self.compiled: list[bool] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.compiled.append(module._compiled_net is not None)


@pytest.mark.timeout(300)
def test_compiled_training_saves_a_checkpoint_an_eager_net_loads(tmp_path: Path) -> None:
    torch._dynamo.reset()
    module = SegmentationModule(
        tiny_net(), optimizer=partial(torch.optim.SGD, lr=0.1), num_classes=3, compile=True
    )
    loader = DataLoader(batches(), batch_size=2)
    check = CompiledCheck()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[check],
    )
    trainer.fit(module, loader, loader)
    assert check.compiled == [True, True, True]
    assert module._compiled_net is None  # dropped at the end of fit
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    state = torch_load(tmp_path / "last.ckpt")["state_dict"]
    assert not any("_orig_mod" in key or "_compiled" in key for key in state)
    eager = tiny_net()
    eager.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
    x = torch.randn(2, 3, 16, 16)
    module.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(eager.eval()(x), module.net(x))
    scores = trainer.validate(module, loader, verbose=False)[0]  # evaluation runs eagerly
    assert 0.0 <= scores["val/mIoU"] <= 1.0


def test_compile_option_values() -> None:
    assert compile_options.check_compile_option("auto") == "auto"
    assert compile_options.check_compile_option("true") is True
    assert compile_options.check_compile_option(False) is False
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="model.compile"):
            SegmentationModule(tiny_net(), num_classes=3, compile=bad)


def test_auto_compiles_only_long_runs_of_nets_with_normalization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compile_options, "inductor_available", lambda device: True)
    long, net = compile_options.AUTO_MIN_BATCHES, tiny_net()
    assert compile_options.wants_compile("auto", long, "cpu", net)
    assert not compile_options.wants_compile("auto", long - 1, "cpu", net)
    no_norm = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())  # VGG-like: nothing to gain
    assert not compile_options.wants_compile("auto", 10 * long, "cpu", no_norm)
    assert compile_options.wants_compile(True, 1, "cpu", no_norm)
    assert not compile_options.wants_compile(False, 10 * long, "cpu", net)
    monkeypatch.setattr(compile_options, "inductor_available", lambda device: False)
    assert not compile_options.wants_compile("auto", 10 * long, "cpu", net)
