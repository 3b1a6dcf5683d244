"""seg: semantic segmentation and single-object localization on PASCAL VOC."""

from seg.resolvers import register as _register_resolvers

_register_resolvers()

__version__ = "0.1.0"


def load(ckpt, overrides=(), device=None, images=None):  # noqa: ANN001, ANN201  (seg.api.load)
    """Load a checkpoint for prediction in Python: ``seg.load(ckpt).predict(image)``.

    See :func:`seg.api.load` (imported on first use, so ``import seg`` stays light).
    """
    from seg.api import load as load_model

    return load_model(ckpt, overrides, device, images)
