"""VOCDataModule: collation, batches, configs, missing data, leak check and DDP sampling."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import load_preset
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DistributedSampler

from seg.data.datamodule import ShardSampler, VOCDataModule, pad_collate, seed_worker_transform
from seg.errors import ConfigError, DatasetNotFoundError

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_pad_collate_pads_image_with_0_and_mask_with_255():
    a = {"image": torch.ones(3, 5, 7), "mask": torch.zeros(5, 7, dtype=torch.int64), "id": "a"}
    b = {"image": torch.ones(3, 9, 4), "mask": torch.ones(9, 4, dtype=torch.int64), "id": "b"}
    batch = pad_collate([a, b])
    assert batch["image"].shape == (2, 3, 9, 7) and batch["mask"].shape == (2, 9, 7)
    assert batch["id"] == ["a", "b"]
    assert batch["image"][0, :, :5, :7].eq(1).all() and batch["image"][0, :, 5:].eq(0).all()
    assert batch["mask"][0, 5:].eq(255).all() and batch["mask"][1, :, 4:].eq(255).all()
    assert batch["mask"][1, :, :4].eq(1).all() and batch["mask"].dtype == torch.int64


def test_pad_collate_extra_keys():
    items = [
        {"image": torch.zeros(3, 4, 4), "label": k, "box": torch.rand(4), "id": str(k)}
        for k in (3, 7)
    ]
    batch = pad_collate(items)
    assert batch["label"].tolist() == [3, 7] and batch["box"].shape == (2, 4)
    assert "mask" not in batch


def _dm(root: Path, **kw) -> VOCDataModule:
    return VOCDataModule(
        root,
        train_transform=load_preset("sample", "train"),
        eval_transform=load_preset("sample", "eval"),
        batch_size=4,
        num_workers=0,
        **kw,
    )


def test_setup_and_batches(sample_root):
    dm = _dm(sample_root)
    dm.setup("fit")
    assert dm.num_classes == 21 and dm.classes[15] == "person"
    assert (len(dm.data_train), len(dm.data_eval)) == (48, 16)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 160, 160) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 160, 160) and batch["mask"].dtype == torch.int64
    assert len(batch["id"]) == 4
    val = next(iter(dm.val_dataloader()))
    item = dm.data_eval[0]
    assert val["image"].shape == (1, 3, *item["mask"].shape)  # full size, not cropped
    assert val["id"] == [item["id"]]


@pytest.mark.parametrize("stages", [("fit", "test"), ("test", "fit")])
def test_folds_hold_out_every_kth_id_of_the_training_list(sample_root, stages):
    whole = _dm(sample_root)
    whole.setup("fit")
    ids = sorted(whole.data_train.ids)  # the 48 ids of the train list
    dm = _dm(sample_root, folds=4, fold=1)
    for stage in stages:  # the split is the same whichever stage comes first
        dm.setup(stage)
    assert sorted(dm.data_eval.ids) == ids[1::4] and len(dm.data_eval.ids) == 12
    assert sorted(dm.data_train.ids) == sorted(set(ids) - set(ids[1::4]))
    held = dm.data_eval[0]
    assert held["image"].shape[-2:] == held["mask"].shape  # evaluation transform: full size


@pytest.mark.parametrize("folds, fold", [(1, 0), (4, 4), (4, -1)])
def test_bad_fold_is_one_line(sample_root, folds, fold):
    with pytest.raises(ConfigError, match=r"data.fold=.* must be in 0..data.folds-1"):
        _dm(sample_root, folds=folds, fold=fold)


def test_generate_sample_in_prepare_data(tmp_path):
    dm = _dm(tmp_path / "s", generate_sample={"n_train": 5, "n_val": 2})
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_eval)) == (5, 2)
    assert len(dm.train_dataloader()) == 1  # drop_last keeps 4 of 5


def test_missing_dataset_raises(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="VOC2012"):
        _dm(tmp_path / "absent").setup("fit")


def test_eval_split_leaking_into_training_raises(sample_root):
    with pytest.raises(ValueError, match="leak"):
        _dm(sample_root, train_split="trainval", split="val").setup("fit")


def test_shard_sampler_covers_every_index_once():
    data = list(range(11))
    shards = [list(ShardSampler(data, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == data  # no padding, no duplicates
    assert [len(ShardSampler(data, 2, r)) for r in range(2)] == [6, 5]


def test_ddp_samplers_with_two_simulated_ranks(sample_root):
    seen, train = [], []
    for rank in range(2):
        dm = _dm(sample_root)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle
        train.append(set(loader.sampler))
        val = dm.val_dataloader()
        assert isinstance(val.sampler, ShardSampler)
        seen += [i for batch in val for i in batch["id"]]
    assert sorted(seen) == sorted(dm.data_eval.ids)  # each val image once across the ranks
    assert not train[0] & train[1] and len(train[0] | train[1]) == 48
    single = _dm(sample_root)
    single.setup("fit")
    assert len(single.val_dataloader()) == 16


@pytest.mark.parametrize(
    ("data", "augment"),
    [
        ("voc", "voc"),
        ("voc_aug", "voc"),
        ("voc_loc", "loc"),
        ("sample", "sample"),
        ("sample_loc", "loc"),
    ],
)
def test_configs_instantiate(tmp_path, data, augment):
    overrides = ["+paths=default", f"+data={data}", f"+augment={augment}", "data.num_workers=0"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(overrides=[*overrides, f"paths.data_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, VOCDataModule) and dm.split == "val"
    if not data.startswith("sample"):
        with pytest.raises(DatasetNotFoundError):
            dm.setup("fit")
        return
    dm.setup("fit")  # generates the sample on first use
    batch = next(iter(dm.val_dataloader()))
    if data == "sample_loc":
        assert batch["box"].shape == (8, 4) and batch["label"].min() >= 1
        assert batch["mask"].shape == (8, 224, 224)
    else:
        assert batch["mask"].shape[0] == 1 and batch["image"].shape[1] == 3


class _CropOfOneImage(torch.utils.data.Dataset):
    """One fixed 64x64 image through a random 8x8 crop, as many times as asked."""

    def __init__(self) -> None:
        import albumentations as A

        self.transform = A.Compose([A.RandomCrop(8, 8)])
        self.image = torch.arange(64 * 64 * 3, dtype=torch.int32).reshape(64, 64, 3).numpy()

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(image=self.image)["image"].copy())


@pytest.mark.parametrize("init_fn", [seed_worker_transform, None])
def test_loader_workers_draw_different_augmentations(init_fn) -> None:
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        _CropOfOneImage(), batch_size=1, num_workers=2, worker_init_fn=init_fn
    )
    crops = list(loader)  # alternates between worker 0 and worker 1
    same = all(torch.equal(a, b) for a, b in zip(crops[0::2], crops[1::2], strict=True))
    assert same is (init_fn is None)  # without the init fn, both workers repeat each other
