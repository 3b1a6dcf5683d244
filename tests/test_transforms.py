"""Augmentation presets (conf/augment/*.yaml): shapes, label values, padding, boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_preset

from seg.data.voc import VOCLocalization, VOCSegmentation

VALID = set(range(21)) | {255}
MEAN, STD = np.array((0.485, 0.456, 0.406)), np.array((0.229, 0.224, 0.225))  # ImageNet


def denormalize(image: np.ndarray) -> np.ndarray:
    """Undo ``A.Normalize``: float (3, H, W) -> uint8 (H, W, 3)."""
    x = image.transpose(1, 2, 0) * STD + MEAN
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _image_and_mask(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.choice([*range(21), 255], size=(h, w)).astype(np.uint8)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask


@pytest.mark.parametrize(("name", "crop"), [("voc", 320), ("sample", 160)])
def test_train_preset_crops_and_keeps_labels(name, crop):
    t = load_preset(name, "train")
    t.set_random_seed(0)
    image, mask = _image_and_mask(187, 251)
    for _ in range(4):
        out = t(image=image, mask=mask)
        assert out["image"].shape == (3, crop, crop) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (crop, crop)
        assert set(torch.unique(out["mask"]).tolist()) <= VALID  # nearest: no blended labels


def test_train_preset_pads_mask_with_255():
    t = load_preset("voc", "train", crop_size=321)
    image = np.full((61, 47, 3), 200, np.uint8)
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    for seed in range(6):
        t.set_random_seed(seed)
        out = t(image=image, mask=np.zeros((61, 47), np.uint8))  # at most 2x: 122 x 94 < 321
        mask = out["mask"]
        assert set(torch.unique(mask).tolist()) == {0, 255}
        assert mask.shape == (321, 321) and mask[-1].eq(255).all()  # padded below
        assert mask[0, 0] == 0 or mask[0, -1] == 0  # content at the top (left, or right if flipped)
        padded = out["image"][:, mask == 255]  # (3, N): image padding is exactly 0 before Normalize
        torch.testing.assert_close(padded, expected[:, None].expand_as(padded), atol=1e-5, rtol=0)


def test_eval_preset_keeps_full_image():
    t = load_preset("voc", "eval")
    image, mask = _image_and_mask(123, 77)
    out = t(image=image, mask=mask)
    assert out["image"].shape == (3, 123, 77)
    assert torch.equal(out["mask"], torch.from_numpy(mask))
    np.testing.assert_array_equal(denormalize(out["image"].numpy()), image)


def test_dataset_with_preset_returns_int64(sample_root):
    ds = VOCSegmentation(sample_root, "val", transform=load_preset("sample", "eval"))
    item = ds[0]
    assert item["mask"].dtype == torch.int64 and item["image"].dtype == torch.float32
    assert item["image"].shape[1:] == item["mask"].shape
    assert set(torch.unique(item["mask"]).tolist()) <= VALID


def test_loc_preset_moves_box(sample_root):
    plain = VOCLocalization(sample_root, "val", list_dir="Segmentation")
    resized = VOCLocalization(
        sample_root, "val", list_dir="Segmentation", transform=load_preset("loc", "eval")
    )
    for i in range(3):
        a, b = plain[i], resized[i]
        assert b["image"].shape == (3, 224, 224)
        np.testing.assert_allclose(a["box"], b["box"], atol=1e-5)  # normalised box is invariant
    t = load_preset("loc", "train")
    t.set_random_seed(0)
    train = VOCLocalization(sample_root, "val", list_dir="Segmentation", transform=t)
    x0, y0, w0, h0 = plain[0]["box"]
    moved, scales = 0, []
    for _ in range(16):
        item = train[0]
        x, y, w, h = item["box"]
        assert item["image"].shape == (3, 224, 224)
        assert min(x, y) >= 0 and max(x + w, y + h) <= 1 + 1e-6  # clipped to the image
        moved += not np.allclose((x, y, w, h), (x0, y0, w0, h0), atol=1e-3)
        if min(x, y) > 0 and max(x + w, y + h) < 1:  # not clipped: scaled by 0.75..1
            scales.append(w / w0)
    assert moved >= 8 and scales  # shrunk or flipped most of the time
    assert all(0.74 <= s <= 1.01 for s in scales) and max(scales) - min(scales) > 0.1
