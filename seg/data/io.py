"""Reading images and label masks from disk, with every failure named after its file.

Images of any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) come back as upright RGB uint8 (the EXIF
orientation is applied). Masks come back as int64 labels in {0..C-1, 255} (C = 21 for VOC):
palette indices of a "P" PNG, grey or 16-bit values, or the classes' colours of an RGB PNG. Anything else raises
:class:`~seg.data.errors.BadSampleError` with the file, and the problem, in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from seg.constants import IGNORE_INDEX, NUM_CLASSES, VOC_PALETTE
from seg.errors import BadSampleError

__all__ = ["check_mask_size", "read_image", "read_mask", "to_rgb", "validate_mask"]

_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I", "F")
_MASK_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _open(path: Path) -> Image.Image:
    """Open and fully decode ``path``; truncated or corrupt files raise BadSampleError."""
    if not path.is_file():
        raise BadSampleError(f"{path}: file not found")
    # Truncated files must fail loudly; never decode them with a grey tail.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    try:
        img = Image.open(path)
        img.load()
    except _PIL_ERRORS as e:
        raise BadSampleError(f"{path}: cannot decode image ({_one_line(e)})") from e
    return img


def _wide_grey_to_rgb(img: Image.Image) -> np.ndarray:
    """16/32-bit or float grey (H, W) -> uint8 RGB (H, W, 3); values above 255 are rescaled."""
    grey = np.asarray(img, dtype=np.float32)  # (H, W)
    if grey.size and grey.max() > 255:
        grey = grey / 257.0  # 65535 -> 255
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def read_image(path: str | Path) -> np.ndarray:
    """Read any image as RGB, upright (EXIF orientation applied).

    Handles L, LA, P, RGBA, CMYK (PNG, TIFF or JPEG), I;16 and friends. 16/32-bit grey is
    rescaled to 8 bit; alpha is dropped.

    Returns:
        uint8 array (H, W, 3), in the orientation a viewer displays.

    Raises:
        BadSampleError: missing, truncated or undecodable file, malformed EXIF, or a mode that
            has no RGB conversion.
    """
    path = Path(path)
    return to_rgb(_open(path), path)


def to_rgb(img: Image.Image, source: str | Path) -> np.ndarray:
    """A decoded PIL image as upright RGB uint8 (H, W, 3); see :func:`read_image`.

    The EXIF rotation is applied in place (no copy of a huge image): pass a copy of an image
    that must stay as it is. ``source`` names it in errors.
    """
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except _PIL_ERRORS as e:  # malformed EXIF
        raise BadSampleError(f"{source}: cannot apply EXIF orientation ({_one_line(e)})") from e
    if img.mode in _WIDE_GREY:
        return _wide_grey_to_rgb(img)
    try:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
    except _PIL_ERRORS as e:
        raise BadSampleError(f"{source}: cannot convert mode {img.mode!r} to RGB ({e})") from e
    pixels = np.asarray(rgb)  # read-only view of a copy of the pixels
    del img, rgb  # free the decoded image before the writable copy (huge photos)
    return pixels.copy()  # (H, W, 3) uint8


def _colour_lut(num_classes: int, palette: Sequence[int]) -> dict[int, int]:
    """Packed RGB colour -> label, for labels 0..num_classes-1 and 255 (``palette`` flat)."""
    pal = np.asarray(palette).reshape(-1, 3)
    return {
        int(r) << 16 | int(g) << 8 | int(b): int(k)
        for k, (r, g, b) in enumerate(pal)
        if k < num_classes or k == IGNORE_INDEX
    }


def _rgb_to_labels(
    rgb: np.ndarray, path: Path, num_classes: int, palette: Sequence[int]
) -> np.ndarray:
    """Map an RGB mask (H, W, 3) in the dataset's colours to labels (H, W); unknown colours are
    an error."""
    packed = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    lut = _colour_lut(num_classes, palette)
    unknown = [f"#{c:06x}" for c in colours.tolist() if c not in lut]
    if unknown:
        raise BadSampleError(
            f"{path}: RGB mask has colours {unknown[:5]} that are not the dataset's "
            "(save masks as palette indices, or in the palette colours of the classes)"
        )
    return np.array([lut[c] for c in colours.tolist()], dtype=np.int64)[
        inverse.reshape(packed.shape)
    ]


def validate_mask(mask: np.ndarray, path: str | Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Check that every value is a label (0..num_classes-1) or void (255); return it as int64.

    Raises:
        BadSampleError: naming ``path`` and (up to five of) the offending values.
    """
    if mask.dtype == np.uint8:  # fast path for PNG masks
        bad = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[num_classes:IGNORE_INDEX])
        bad += num_classes
    else:
        bad = np.setdiff1d(np.unique(mask), [*range(num_classes), IGNORE_INDEX])
    if bad.size:
        raise BadSampleError(
            f"{path}: mask values {bad[:5].tolist()} outside {{0..{num_classes - 1}, 255}}"
        )
    return mask.astype(np.int64, copy=False)


def read_mask(
    path: str | Path, num_classes: int = NUM_CLASSES, palette: Sequence[int] = VOC_PALETTE
) -> np.ndarray:
    """Read a label mask: palette INDICES of a "P" PNG (never its colours), or grey/16-bit values.

    RGB(A) masks are accepted when every colour is one of the classes' ``palette`` colours.

    Args:
        path: The mask file.
        num_classes: Labels are 0..num_classes-1, and 255 (void).
        palette: The classes' colours, flat ``[r0, g0, b0, r1, ...]`` (VOC's by default).

    Returns:
        int64 array (H, W) with values in 0..num_classes-1 and 255.

    Raises:
        BadSampleError: missing/corrupt file, unsupported mode, unknown colour or value outside
            the labels.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in _MASK_MODES:
        mask = np.asarray(img)  # (H, W) indices
    elif img.mode in ("RGB", "RGBA"):
        mask = _rgb_to_labels(np.asarray(img.convert("RGB")), path, num_classes, palette)
    else:
        raise BadSampleError(f"{path}: unsupported mask mode {img.mode!r}")
    return validate_mask(mask, path, num_classes)


def check_mask_size(mask: np.ndarray, image: np.ndarray, path: str | Path) -> None:
    """Raise BadSampleError naming ``path`` and both sizes unless mask (H, W) fits image (H, W, 3)."""
    if mask.shape[:2] != image.shape[:2]:
        (mh, mw), (ih, iw) = mask.shape[:2], image.shape[:2]
        raise BadSampleError(f"{path}: mask size {mw}x{mh} != image size {iw}x{ih} (W x H)")
