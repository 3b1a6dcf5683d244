"""The LightningDataModule for VOC segmentation, SBD trainaug, the synthetic sample and
single-object localization (the dataset class is a Hydra ``_partial_`` node, not a string).

Batches: ``{"image": float32 (B, 3, H, W), "mask": int64 (B, H, W), "id": list[str]}`` for
segmentation; localization adds ``"label"`` int64 (B,) and ``"box"`` float32 (B, 4).

Batch: ``batch_size`` is the global batch of one optimizer step. Each of the P processes loads
``batch_size / P`` images per step, in micro-batches of ``micro_batch_size`` whose gradients are
accumulated; ``setup("fit")`` sets the trainer's ``accumulate_grad_batches`` to match
(:mod:`seg.data.batching`).

Distributed: Trainer configs set ``use_distributed_sampler: false`` and the samplers are built
here. Training shards with ``DistributedSampler`` (shuffled, seeded, padded); evaluation uses
:class:`ShardSampler` (``indices[rank::world_size]``, never padded), so every image is scored
exactly once and DDP metrics equal single-process ones. Ranks may then run a different number
of eval steps, which is fine because metrics are synced once, at ``compute()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

from seg.constants import IGNORE_INDEX, VOC_CLASSES
from seg.data.batching import BatchPlan, WholeSteps, plan_batches
from seg.data.sample import ensure_sample
from seg.data.sbd import check_no_leak
from seg.data.voc import VOCSegmentation
from seg.errors import ConfigError


def _as_chw(image: Any) -> torch.Tensor:
    """Tensor (3, H, W); numpy images (H, W, 3) from transform-free datasets are permuted."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return image


def pad_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples of different sizes, padding at the bottom/right to the batch maximum.

    Images (3, H, W) are padded with 0 and masks (H, W) with ``IGNORE_INDEX``, so padding never
    counts in the loss or the metrics. ``id`` stays a list; other keys use ``default_collate``.

    Samples that are None (bad ones an evaluation dataset dropped) are left out; a batch of
    none is ``{"id": []}``, which the modules skip.

    Returns:
        dict with ``image`` (B, 3, Hmax, Wmax), ``mask`` (B, Hmax, Wmax) int64, ``id`` list[str].
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        return {"id": []}
    images = [_as_chw(s["image"]) for s in samples]
    hmax = max(x.shape[-2] for x in images)
    wmax = max(x.shape[-1] for x in images)

    def pad(x: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(x, (0, wmax - x.shape[-1], 0, hmax - x.shape[-2]), value=value)

    batch: dict[str, Any] = {"image": torch.stack([pad(x, 0) for x in images])}  # (B, 3, H, W)
    if "mask" in samples[0]:
        masks = [torch.as_tensor(s["mask"], dtype=torch.int64) for s in samples]
        batch["mask"] = torch.stack([pad(m, IGNORE_INDEX) for m in masks])  # (B, H, W)
    batch["id"] = [s["id"] for s in samples]
    rest = [{k: v for k, v in s.items() if k not in batch} for s in samples]
    if rest[0]:
        batch.update(default_collate(rest))
    return batch


def seed_worker_transform(worker_id: int) -> None:
    """``worker_init_fn``: give each loader worker its own augmentation stream.

    Albumentations 2 pipelines keep a private generator that global seeding does not touch, so
    without this every worker (a copy of the same pipeline) would draw the same augmentations.
    The seed is the worker's torch seed, which Lightning's ``seed_everything`` makes reproducible.
    """
    info = torch.utils.data.get_worker_info()
    data = info.dataset if info is not None else None
    while data is not None and not hasattr(data, "transform"):
        data = getattr(data, "dataset", None)  # Subset / wrapper datasets
    transform = getattr(data, "transform", None)
    if info is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


class ShardSampler(Sampler[int]):
    """``range(n)[rank::world_size]``: disjoint, unpadded shards that together cover every index
    exactly once (unlike ``DistributedSampler``, which pads with duplicates)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


class VOCDataModule(L.LightningDataModule):
    """PASCAL VOC (or its synthetic stand-in) for Lightning.

    Args:
        root: folder containing ``VOC2012/`` (e.g. ``data/VOCdevkit``).
        train_split: training list name (``train``, ``train_aug``, ``trainval``).
        split: evaluation list used by validate/test/predict (``val``).
        train_transform: albumentations pipeline for training.
        eval_transform: albumentations pipeline for evaluation (full image).
        batch_size: training batch of one optimizer step, all processes together.
        eval_batch_size: evaluation batch size; 1 keeps results independent of padding.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory (GPU training).
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        skip_bad: skip unreadable samples with a warning instead of raising BadSampleError.
        dataset: partial ``(root, split=, transform=, skip_bad=) -> Dataset``; default
            :class:`VOCSegmentation`. E.g. ``VOCLocalization`` for localization.
        train_dataset: partial for the training set only (SBD trainaug); default ``dataset``.
        generate_sample: ``{n_train, n_val, seed, ...}`` to generate the synthetic sample into
            ``root`` in ``prepare_data`` when it is missing; ``None`` for real data.
        seed: shuffling seed of the distributed training sampler.
        drop_last: end every epoch on a full optimizer step (when there is more than one).
        micro_batch_size: images per forward pass in each process; gradients are accumulated
            over ``batch_size / world_size / micro_batch_size`` of them. None: no accumulation.
        classes: the dataset's class names (index = label value); VOC's 21 when None.
        palette: RGB colour of each label (masks saved in colours); VOC's when None.
        folds: cross-validation inside ``train_split``: its ids, sorted, are dealt into
            ``folds`` folds (id i to fold i mod ``folds``); fold ``fold`` is the evaluation set
            (read like the training set, with ``eval_transform``) and the others train. None:
            train on ``train_split`` and evaluate on ``split``.
        fold: the held-out fold, 0 .. ``folds`` - 1.
    """

    def __init__(
        self,
        root: str | Path,
        train_split: str = "train",
        split: str = "val",
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        skip_bad: bool = False,
        dataset: Callable[..., Dataset] | None = None,
        train_dataset: Callable[..., Dataset] | None = None,
        generate_sample: Mapping[str, Any] | None = None,
        seed: int = 0,
        drop_last: bool = True,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        micro_batch_size: int | None = None,
        folds: int | None = None,
        fold: int = 0,
    ):
        super().__init__()
        self.root = Path(root)
        self.train_split, self.split = train_split, split
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.micro_batch_size = micro_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.skip_bad, self.seed, self.drop_last = skip_bad, seed, drop_last
        self.dataset = dataset or VOCSegmentation
        self.train_dataset = train_dataset or self.dataset
        self.generate_sample = dict(generate_sample) if generate_sample is not None else None
        self.classes = tuple(classes or VOC_CLASSES)
        self.palette = [list(c) for c in palette] if palette else None
        if folds is not None and not (folds >= 2 and 0 <= fold < folds):
            raise ConfigError(f"data.fold={fold} must be in 0..data.folds-1 with data.folds >= 2")
        self.folds, self.fold = folds, fold
        self._held: set[str] | None = None  # the held-out fold's ids
        self.data_train: Dataset | None = None
        self.data_eval: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def prepare_data(self) -> None:
        """Generate the synthetic sample once (rank 0 only; a no-op when it is complete)."""
        if self.generate_sample is not None:
            ensure_sample(self.root, **self.generate_sample)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets; raises DatasetNotFoundError when the data is missing."""
        if self.generate_sample is not None and self.trainer is None:
            self.prepare_data()  # used without a Trainer (scripts, notebooks)
        if stage in (None, "fit") and self.data_train is None:
            self.data_train = self._build(
                self.train_dataset, self.train_split, self.train_transform
            )
        if self.data_eval is None:
            held_out = self.folds is not None  # a fold of train_split, read like the training set
            factory = self.train_dataset if held_out else self.dataset
            split = self.train_split if held_out else self.split
            self.data_eval = self._build(factory, split, self.eval_transform)
            self.data_eval.drop_bad = True  # skip_bad drops a bad sample, never scores another
        if self.folds is not None:
            self._split_folds()
        if stage in (None, "fit"):
            train_ids, eval_ids = (getattr(d, "ids", ()) for d in (self.data_train, self.data_eval))
            check_no_leak(train_ids, eval_ids, f"{self.train_split!r} training")
            self._set_accumulation()

    def _split_folds(self) -> None:
        """Keep the training folds in ``data_train`` and the held-out fold in ``data_eval``."""
        if self._held is None:  # from the whole list, once
            ids = sorted(self.data_eval.ids)
            if len(ids) < self.folds:
                raise ConfigError(
                    f"data.folds={self.folds}: {self.train_split!r} has only {len(ids)} ids"
                )
            self._held = set(ids[self.fold :: self.folds])
        self.data_eval.ids = [i for i in self.data_eval.ids if i in self._held]
        if self.data_train is not None:
            self.data_train.ids = [i for i in self.data_train.ids if i not in self._held]

    @property
    def batch_plan(self) -> BatchPlan:
        """How ``batch_size`` splits over this run's processes and micro-batches."""
        return plan_batches(self.batch_size, self._world()[0], self.micro_batch_size)

    def _set_accumulation(self) -> None:
        """Give the trainer the gradient accumulation that makes one step one global batch."""
        plan, trainer = self.batch_plan, self.trainer
        if trainer is None:
            return
        configured = getattr(trainer, "accumulate_grad_batches", 1)
        if configured not in (1, plan.accumulate):
            raise ConfigError(
                f"trainer.accumulate_grad_batches={configured}: data.batch_size={self.batch_size} "
                "is the global batch of one optimizer step; set data.micro_batch_size to "
                "accumulate gradients instead"
            )
        trainer.accumulate_grad_batches = plan.accumulate

    def _build(self, factory: Callable[..., Dataset], split: str, transform) -> Dataset:
        return factory(
            self.root,
            split=split,
            transform=transform,
            skip_bad=self.skip_bad,
            classes=self.classes,
            palette=self.palette,
        )

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, data: Dataset, sampler: Sampler, batch_size: int, drop_last=False):
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=pad_collate,
            worker_init_fn=seed_worker_transform,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        if world > 1:
            sampler = DistributedSampler(
                self.data_train, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
            )
        else:
            sampler = RandomSampler(self.data_train)
        plan = self.batch_plan
        n = len(sampler)
        if self.drop_last and n >= plan.per_process and n % plan.per_process:
            sampler = WholeSteps(sampler, plan.per_process)  # no smaller last step
        return self._loader(self.data_train, sampler, plan.micro_batch)

    def _eval_loader(self) -> DataLoader:
        world, rank = self._world()
        if world > 1:
            sampler = ShardSampler(self.data_eval, num_replicas=world, rank=rank)
        else:
            sampler = SequentialSampler(self.data_eval)
        return self._loader(self.data_eval, sampler, self.eval_batch_size)

    val_dataloader = test_dataloader = predict_dataloader = _eval_loader
