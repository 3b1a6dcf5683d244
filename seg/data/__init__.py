"""Data layer: VOC readers and datasets (``voc``), SBD trainaug (``sbd``), the synthetic sample
(``sample``), augmentation presets (``transforms``), the LightningDataModule (``datamodule``),
the split of the global batch (``batching``) and the downloader (``download``). Import from the
submodules; this package stays import-light.
"""

from seg.errors import BadSampleError, DatasetNotFoundError

__all__ = ["BadSampleError", "DatasetNotFoundError"]
