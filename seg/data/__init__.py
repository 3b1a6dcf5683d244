"""Data layer: VOC readers and datasets (``voc``), SBD trainaug (``sbd``), a dataset's classes and
colours (``classes``), the synthetic sample (``sample``), image and mask reading (``io``), the
LightningDataModule (``datamodule``), the split of the global batch (``batching``) and the
downloader (``download``). Import from the submodules; this package stays import-light
(augmentation presets live in ``conf/augment``).
"""
