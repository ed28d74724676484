"""Building blocks of the model zoo: conv blocks and EfficientViT/QT-ViT multi-scale linear attention."""
from .conv import ConvBlock, ConvNormAct, DropPath, DSConv, FusedMBConv, MBConv, ResBlock, out_size
from .fold import ChannelAffine, bn_scale_shift, fuse_conv_bn
from .lite_mla import EfficientViTBlock, LiteMLA, QKVAggregation

__all__ = [
    "ChannelAffine", "ConvBlock", "ConvNormAct", "DropPath", "DSConv", "EfficientViTBlock", "FusedMBConv",
    "LiteMLA", "MBConv", "QKVAggregation", "ResBlock", "bn_scale_shift", "fuse_conv_bn", "out_size",
]
