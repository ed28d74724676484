"""Building blocks of the model zoo: conv blocks and EfficientViT/QT-ViT multi-scale linear attention."""
from .conv import ConvBlock, ConvNormAct, DropPath, DSConv, FusedMBConv, MBConv, ResBlock, fuse_conv_bn, out_size
from .lite_mla import ChannelAffine, EfficientViTBlock, LiteMLA, QKVAggregation

__all__ = [
    "ChannelAffine", "ConvBlock", "ConvNormAct", "DropPath", "DSConv", "EfficientViTBlock", "FusedMBConv",
    "LiteMLA", "MBConv", "QKVAggregation", "ResBlock", "fuse_conv_bn", "out_size",
]
