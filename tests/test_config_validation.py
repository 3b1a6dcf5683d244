"""Bad configs fail before anything is built (issue #6): unknown group options list the valid
choices (Hydra), invalid values name the key, the value and the rule, on one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXPERIMENTS, MODELS, REPO, run_entry
from conftest import compose as cfg_of
from hydra.errors import MissingConfigException

from seg import api as api_mod
from seg import evaluate as evaluate_mod
from seg import predict as predict_mod
from seg import train as train_mod
from seg.cli import run
from seg.errors import ConfigError
from seg.validate import problems, validate_config


@pytest.mark.slow
def test_unknown_model_lists_the_choices_at_the_command_line(tmp_path: Path) -> None:
    """What a user sees (~10 s: train.py imports Lightning before Hydra composes)."""
    proc = run_entry("train.py", "model=nope", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Could not find 'model/nope'" in proc.stderr
    listed = proc.stderr.split("Available options in 'model':")[1].split()
    assert set(MODELS) <= set(listed)


@pytest.mark.parametrize(
    ("group", "config"),
    [("model", "train"), ("data", "train"), ("augment", "train"), ("data", "evaluate")],
)
def test_unknown_group_option_lists_the_choices(group: str, config: str) -> None:
    """The exception Hydra prints as is (HYDRA_FULL_ERROR unset) when composing fails."""
    with pytest.raises(MissingConfigException) as err:
        cfg_of(config, f"{group}=nope")
    choices = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
    assert f"Could not find '{group}/nope'" in str(err.value)
    listed = str(err.value).split(f"Available options in '{group}':")[1].split("Config search")[0]
    assert listed.split() == choices


def test_every_shipped_config_is_valid() -> None:
    """No false alarms: every experiment, and the models no experiment uses."""
    runs = [[f"experiment={e}", "++frontend_ckpt=x"] for e in EXPERIMENTS]
    runs += [[f"model={m}"] for m in ("fcn16s", "fcn32s", "fcn8s_resnet50", "unet")]
    for overrides in runs:
        assert problems(cfg_of("train", *overrides)) == [], overrides
    assert problems(cfg_of("evaluate", "ckpt=x")) == []


CASES = {  # id: (config, overrides, the problems reported, in order)
    "optimizer": (
        "train",
        ["optimizer.lr=-0.1", "optimizer.weight_decay=-1", "optimizer.momentum=1.5"],
        [
            "optimizer.lr=-0.1 must be > 0",
            "optimizer.weight_decay=-1 must be >= 0",
            "optimizer.momentum=1.5 must be in [0, 1)",
        ],
    ),
    "lr not a number": ("train", ["optimizer.lr=fast"], ["optimizer.lr='fast' must be > 0"]),
    "crop larger than pad": (
        "train",
        ["augment.train.transforms.3.height=400"],
        [
            "augment.train.transforms[3].height=400 (RandomCrop) is larger than "
            "augment.train.transforms[2].min_height=320 (PadIfNeeded)"
        ],
    ),
    "pad smaller than crop": (
        "train",
        ["experiment=quickstart", "augment.train.transforms.2.min_width=100"],
        [
            "augment.train.transforms[3].width=160 (RandomCrop) is larger than "
            "augment.train.transforms[2].min_width=100 (PadIfNeeded)"
        ],
    ),
    "augment": (
        "train",
        ["augment.crop_size=0", "augment.std=[0.2,0,0.2]"],
        [
            "augment.crop_size=0 must be an integer >= 1",
            "augment.std=[0.2, 0, 0.2] must be 3 numbers > 0",
        ],
    ),
    "data": (
        "train",
        ["data.batch_size=0", "data.eval_batch_size=-2", "data.num_workers=-1"],
        [
            "data.batch_size=0 must be an integer >= 1",
            "data.eval_batch_size=-2 must be an integer >= 1",
            "data.num_workers=-1 must be an integer >= 0",
        ],
    ),
    "net classes": (
        "train",
        ["model.net.num_classes=20", "model.class_weights=[1,2]", "model.dice_weight=-1"],
        [
            "model.dice_weight=-1 must be >= 0",
            "model.net.num_classes=20 must be 21 (the 21 classes of data.classes)",
            "model.class_weights has 2 entries for 21 classes",
        ],
    ),
    "module classes": (
        "train",
        ["model.num_classes=10"],
        [
            "model.num_classes=10 must be 21 (the 21 classes of data.classes)",
            "model.net.num_classes=10 must be 21 (the 21 classes of data.classes)",
        ],
    ),
    "nested classes": (
        "train",
        ["model=dilation_context", "model.net.frontend.num_classes=5"],
        [
            "model.net.frontend.num_classes=5 must be 21 (the 21 classes of data.classes)",
            "model.net.context.num_classes=5 must be 21 (the 21 classes of data.classes)",
        ],
    ),
    "localizer classes": (
        "train",
        ["model=localizer", "model.net.num_classes=21", "model.net.seg_classes=5"],
        [
            "model.net.num_classes=21 must be 20 (the 21 classes of data.classes)",
            "model.net.seg_classes=5 must be 21 (the 21 classes of data.classes)",
        ],
    ),
    "trainer": (
        "train",
        ["trainer.max_epochs=0", "trainer.accumulate_grad_batches=0", "seed=1.5"],
        [
            "seed=1.5 must be an integer",
            "trainer.max_epochs=0 must be an integer >= 1 (or -1: no limit)",
            "trainer.accumulate_grad_batches=0 must be an integer >= 1",
        ],
    ),
    "scheduler": (
        "train",
        ["scheduler=warmup_poly", "scheduler.warmup_fraction=1"],
        ["scheduler.warmup_fraction=1 must be in [0, 1)"],
    ),
    "inference": (
        "evaluate",
        ["ckpt=x", "inference.stride=600", "tta.scales=[1.0,-0.5]", "data.eval_batch_size=0"],
        [
            "data.eval_batch_size=0 must be an integer >= 1",
            "tta.scales=[1.0, -0.5] must be a non-empty list of numbers > 0",
            "inference.stride=600 is larger than inference.crop=512 (sliding windows would leave "
            "pixels unpredicted)",
        ],
    ),
    "inference crop": (
        "evaluate",
        ["ckpt=x", "inference.crop=0"],
        ["inference.crop=0 must be an integer >= 1"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_invalid_values_are_named_on_one_line(case: str) -> None:
    config, overrides, expected = CASES[case]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg_of(config, *overrides))
    assert str(err.value) == "invalid config: " + "; ".join(expected)


@pytest.mark.parametrize(
    ("module", "config", "overrides"),
    [
        (train_mod, "train", ["optimizer.lr=-0.1"]),
        (evaluate_mod, "evaluate", ["ckpt=/nowhere.ckpt", "inference.stride=600"]),
    ],
)
def test_entry_point_fails_before_anything_runs(module, config, overrides, capsys, monkeypatch):
    cfg = cfg_of(config, *overrides)
    for name in ("instantiate", "load_checkpoint"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{config} started"))
    with pytest.raises(SystemExit) as exit_:
        run(getattr(module, config), cfg)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: invalid config: ") and "\n" not in err
    assert overrides[-1].split("=")[0] in err


def test_predict_checks_inference_options_first(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    cfg = cfg_of(
        "predict", "ckpt=x.ckpt", f"input={tmp_path}", f"output={out}", "inference.stride=600"
    )
    monkeypatch.setattr(api_mod, "load_checkpoint", lambda path: pytest.fail("loaded"))
    with pytest.raises(SystemExit) as exit_:
        run(predict_mod.predict, cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid config: inference.stride=600 is larger than")
    assert "\n" not in err and not out.exists()
