"""Building blocks of L2ViT (Zheng, "The Linear Attention Resurrection in Vision Transformer", arXiv 2501.16182).

Official code: github.com/ChuanyangZheng/L2ViT, ``classification/models/l2vit.py``. These modules compute the same
functions with qtvit's own names; ``qtvit.models.l2vit.L2Vit.checkpoint_filter_fn`` maps the official keys.

Layout: every block takes and returns a channels-last map ``(B, H, W, C)``. The official code carries tokens
``(B, N, C)`` plus a size tuple; a channels-last map is the same memory and carries its own size, and LayerNorm and
Linear act on the last axis either way.

Blocks:
- ``LWABlock``: local window attention (plain softmax in non-overlapping w x w windows, zero-padded, no shift, no
  relative position bias), conditional positional encodings (CPE) before attention and before the MLP.
- ``LGABlock``: linear global attention (qtvit.attention kernel "l2vit": ReLU features, per-head temperature on KV,
  denominator clamped at 100), then the local concentration module (LCM) as its own pre-norm residual, then the MLP.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..attention import KernelLayer, kernel_factory
from .drop import DropPath
from .fold import bn_scale_shift, fuse_conv_bn

__all__ = [
    "DropPath", "ConvPosEnc", "Mlp", "WindowAttention", "LinearGlobalAttention", "LocalConcentration",
    "FusedLocalConcentration", "LWABlock", "LGABlock", "ConvStem", "Downsample", "depthwise_conv2d",
]


def _to_nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _to_nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def depthwise_conv2d(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` for a depthwise, stride-1, odd-kernel, zero-padded 'same' conv (CPE and LCM convs).

    Torch's CPU float64 depthwise convolution loops over the channels one by one (about 50x slower than float32),
    and float64 is what parity checks against the official code run in. There the same sum is taken as k*k
    shifted multiply-adds, equal up to rounding order; every other dtype/device uses the conv itself.
    """
    if x.dtype != torch.float64 or x.device.type != "cpu":
        return conv(x)
    k = conv.kernel_size[0]
    H, W = x.shape[-2:]
    xp = F.pad(x, (k // 2,) * 4)
    w = conv.weight[:, 0, :, :, None, None]  # (C, k, k, 1, 1)
    out = conv.bias.view(-1, 1, 1).expand_as(x).clone()
    for u in range(k):
        for v in range(k):
            out = out.addcmul(xp[:, :, u:u + H, v:v + W], w[:, u, v])
    return out


class ConvPosEnc(nn.Module):
    """Conditional positional encoding: ``x + DWConv3x3(x)`` (official ``CPE``; its optional GELU is off in all
    released models, so it is left out)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + _to_nhwc(depthwise_conv2d(_to_nchw(x), self.conv))


class Mlp(nn.Module):
    """Linear(C, hidden) -> GELU (exact) -> Linear(hidden, C), no dropout (as the official ``Mlp``)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """``(B, H, W, C)`` with H, W multiples of ``window_size`` -> ``(B * nW, window_size**2, C)``."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_reverse(windows: Tensor, window_size: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window_size**2, C)`` -> ``(B, H, W, C)``."""
    C = windows.shape[-1]
    x = windows.reshape(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


class WindowAttention(nn.Module):
    """Softmax self-attention inside non-overlapping ``window_size`` x ``window_size`` windows.

    The map is zero-padded at the bottom/right to a multiple of the window and the padded tokens take part in the
    attention unmasked, exactly as the official code (and Swin without shift) does; the padding is cropped after.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        ws = self.window_size
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        windows = window_partition(x, ws)
        Bw, N, _ = windows.shape
        qkv = self.qkv(windows).reshape(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale head_dim**-0.5, as the official
        out = self.proj(out.transpose(1, 2).reshape(Bw, N, C))
        return window_reverse(out, ws, Hp, Wp)[:, :H, :W, :]


class LinearGlobalAttention(nn.Module):
    """Global linear attention over all H*W tokens with a kernel of :mod:`qtvit.attention`.

    With the default kernel "l2vit" this is the official enhanced linear attention: per head
    ``o_i = (relu(q_i) @ (tau_h * sum_j relu(k_j)^T v_j)) / max(relu(q_i) . sum_j relu(k_j), 100)``, where the
    learnable ``tau_h`` is the kernel's ``temperature`` (official ``attn.temperature``). Another kernel factory
    (``qtvit.attention.kernel_factory("relu")``, "qt", "softmax"...) swaps the formula with the same qkv/proj
    projections.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 kernel_layer: KernelLayer | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.kernel = (kernel_layer or kernel_factory("l2vit"))(self.head_dim, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        N = H * W
        qkv = self.qkv(x.reshape(B, N, C)).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self.kernel(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))


class LocalConcentration(nn.Module):
    """Local concentration module (official ``LCM``): DWConv k x k -> GELU -> BatchNorm -> DWConv k x k.

    It restores the local focus that linear attention lacks. ``fuse()`` returns an exact inference form with the
    BatchNorm folded into ``conv2`` (see :class:`FusedLocalConcentration`).
    """

    def __init__(self, dim: int, kernel_size: int = 7, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"LCM kernel_size must be odd to keep the map size, got {kernel_size}")
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = act_layer()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(depthwise_conv2d(_to_nchw(x), self.conv1))
        return _to_nhwc(depthwise_conv2d(self.bn(y), self.conv2))

    @torch.no_grad()
    def fuse(self) -> "FusedLocalConcentration":
        """Fold the BatchNorm (eval statistics) into conv2; equal to ``self.eval()`` up to rounding."""
        return FusedLocalConcentration(self)


class FusedLocalConcentration(nn.Module):
    """Inference form of :class:`LocalConcentration` with the BatchNorm folded into ``conv2``.

    BN(y) = a * y + b per channel sits between GELU and the zero-padded ``conv2``. The scale ``a`` folds into the
    conv2 weights exactly. The shift ``b`` does not fold into a plain bias: conv2 sees ``b`` only at in-bounds taps,
    so near the border its contribution is smaller. It is added back exactly as the bias map
    ``b_c * sum(in-bounds taps of w_c)``, which is separable (row mask x kernel x column mask) and costs a small
    einsum per forward.
    """

    def __init__(self, lcm: LocalConcentration):
        super().__init__()
        bn = lcm.bn
        scale, shift = bn_scale_shift(bn)
        self.conv1 = lcm.conv1
        self.act = lcm.act
        w = lcm.conv2.weight.detach()
        self.conv2 = nn.Conv2d(
            w.shape[0], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2, groups=w.shape[0],
            device=w.device, dtype=w.dtype,
        )
        self.conv2.weight.copy_(w * scale.view(-1, 1, 1, 1))
        self.conv2.bias.copy_(lcm.conv2.bias.detach())
        self.register_buffer("shift_kernel", (w * shift.view(-1, 1, 1, 1))[:, 0].clone())  # (C, k, k)

    def _shift_map(self, H: int, W: int, like: Tensor) -> Tensor:
        k = self.shift_kernel.shape[-1]

        def in_bounds(n: int) -> Tensor:  # (n, k): does tap u of output position i read inside [0, n)?
            pos = torch.arange(n, device=like.device)[:, None] + torch.arange(k, device=like.device) - k // 2
            return ((pos >= 0) & (pos < n)).to(like.dtype)

        return torch.einsum("iu,cuv,jv->cij", in_bounds(H), self.shift_kernel.to(like.dtype), in_bounds(W))

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[1:3]
        y = depthwise_conv2d(self.act(depthwise_conv2d(_to_nchw(x), self.conv1)), self.conv2)
        return _to_nhwc(y + self._shift_map(H, W, y))


class LWABlock(nn.Module):
    """Local window attention block: ``x = cpe1(x); x = x + attn(norm1(x)); x = cpe2(x); x = x + mlp(norm2(x))``."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_path: float = 0.0,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.cpe1 = ConvPosEnc(dim)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias)
        self.cpe2 = ConvPosEnc(dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.cpe1(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = self.cpe2(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LGABlock(nn.Module):
    """Linear global attention block:
    ``x = cpe1(x); x = x + attn(norm1(x)); x = x + lcm(norm_lcm(x)); x = x + mlp(norm2(x))``."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_path: float = 0.0,
            kernel_layer: KernelLayer | None = None,
            lcm_kernel_size: int = 7,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.cpe1 = ConvPosEnc(dim)
        self.norm1 = norm_layer(dim)
        self.attn = LinearGlobalAttention(dim, num_heads, qkv_bias=qkv_bias, kernel_layer=kernel_layer)
        self.norm_lcm = norm_layer(dim)
        self.lcm = LocalConcentration(dim, kernel_size=lcm_kernel_size, act_layer=act_layer)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.cpe1(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.lcm(self.norm_lcm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvStem(nn.Module):
    """Stride-4 stem (official "2L" conv stem + patch-embed norm):
    Conv3x3/2 -> BN -> ReLU -> Conv3x3/2 -> BN -> LayerNorm, returning a channels-last map.

    Like the official PatchEmbed, the image is first zero-padded at the bottom/right to a multiple of 4.
    """

    def __init__(
            self,
            in_chans: int,
            dim: int,
            act_layer: type[nn.Module] = nn.ReLU,
            norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(dim // 2)
        self.act = act_layer()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(dim)
        self.norm = norm_layer(dim)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        x = F.pad(x, (0, (4 - W % 4) % 4, 0, (4 - H % 4) % 4))
        x = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return self.norm(_to_nhwc(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold both BatchNorms (eval statistics) into the convs, in place; a second call changes nothing."""
        if isinstance(self.bn1, nn.Identity):  # folded already
            return
        self.conv1 = fuse_conv_bn(self.conv1, self.bn1)
        self.conv2 = fuse_conv_bn(self.conv2, self.bn2)
        self.bn1, self.bn2 = nn.Identity(), nn.Identity()


class Downsample(nn.Module):
    """LayerNorm -> (zero-pad odd H/W at the bottom/right) -> Conv2x2 stride 2, on channels-last maps."""

    def __init__(self, in_dim: int, out_dim: int, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = _to_nchw(self.norm(x))
        H, W = x.shape[-2:]
        x = F.pad(x, (0, W % 2, 0, H % 2))
        return _to_nhwc(self.conv(x))
