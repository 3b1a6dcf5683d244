"""Inference: the one path from a trained net and an image to class scores and a mask.

"Where does a mask come from": here, and only here. Training-time validation, ``evaluate.py``,
``predict.py`` and the Python API all call these functions, so ``val/mIoU`` and ``evaluate.py``
come from the same code. The shape follows mmsegmentation's ``EncoderDecoder``
(https://github.com/open-mmlab/mmsegmentation):

- :func:`windows` is the one window enumerator: the whole image, or overlapping crops of at most
  ``crop`` pixels per side (never padded: the nets take any size) whose last row and column of
  windows end exactly at the image border.
- :func:`tta_probs` is the one test-time augmentation: softmax probabilities of a window,
  averaged over ``scales`` and horizontal ``flip`` (mmseg's ``aug_test`` semantics; DeepLab,
  https://arxiv.org/abs/1606.00915). Each scaled output is resized back before the softmax.
- :func:`predict_probs` averages the windows' probabilities where they overlap;
  :func:`predict_mask_banded` computes the same windows for a huge image one band of rows at a
  time, with memory bounded by the image width.
- :func:`scores_to_mask` is the one argmax, at the original size.
- :func:`prepare_net` decides whether a run compiles the net (``inference.compile``) and
  returns the module the functions above then run (:mod:`seg.inference.compiled`).
"""

from seg.inference.boxes import Localization, box_record, localize
from seg.inference.compiled import prepare_net
from seg.inference.config import InferenceConfig
from seg.inference.masks import (
    class_probs,
    image_rows,
    normalise,
    predict_mask,
    predict_mask_banded,
    predict_probs,
    scores_to_mask,
    tta_probs,
    window_starts,
    windows,
)

__all__ = [
    "InferenceConfig",
    "Localization",
    "box_record",
    "class_probs",
    "image_rows",
    "localize",
    "normalise",
    "predict_mask",
    "predict_mask_banded",
    "predict_probs",
    "prepare_net",
    "scores_to_mask",
    "tta_probs",
    "window_starts",
    "windows",
]
