"""Segmentation and localization networks (plain ``nn.Module``s returning logits)."""

from seg.models.encoders import MobileNetV2Encoder, smp_encoder
from seg.models.localization import Localizer, select_box
from seg.models.receptive_field import receptive_field
from seg.models.unet import EncoderUNet, UNet

__all__ = [
    "EncoderUNet",
    "Localizer",
    "MobileNetV2Encoder",
    "UNet",
    "receptive_field",
    "select_box",
    "smp_encoder",
]
