"""See what a trained network sees: ``python explain.py ckpt=PATH input=IMAGES output=DIR``.

- :mod:`.filters`: the first convolution's kernels; per-channel statistics of deeper layers.
- :mod:`.patches`: top-activating image patches per channel (Zeiler & Fergus 2014).
- :mod:`.maximize`: class-score maximisation from noise (Simonyan et al. 2014).
- :mod:`.cam`: Grad-CAM per predicted class (Selvaraju et al. 2017, via ``pytorch-grad-cam``).
- :mod:`.fields`: empirical and theoretical receptive field per stage (Luo et al. 2016).

:mod:`.layers` says which layers can be shown, :mod:`.data` where the images come from,
:mod:`.kinds` turns each kind into files and :mod:`.run` is the task ``explain.py`` runs.
"""

from seg.explain.run import explain

__all__ = ["explain"]
