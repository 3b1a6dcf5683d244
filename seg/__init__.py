"""seg: semantic segmentation and single-object localization on PASCAL VOC."""

from seg.resolvers import register as _register_resolvers

_register_resolvers()

__version__ = "0.1.0"
