"""LiteMLA, EfficientViT's lightweight multi-scale linear attention, and the EfficientViT block.

QT-ViT is not a separate class: it is LiteMLA configured with

- ``kernel="qt"`` (the official AMD QT-ViT feature map, see ``qtvit.attention``),
- ``pos_embed_size=(h, w)``: a learnable absolute positional embedding added to K of every (scale, head),
  resized bicubically when the token map is not ``(h, w)``,
- ``v_shortcut=True``: the non-linear shortcut ``o = o + GELU(BN(v))`` (exact GELU, one BN over the head dim).

Layout (as in the official code, so checkpoints map one to one): the 1x1 ``qkv`` conv emits ``heads`` groups of
``[q (d), k (d), v (d)]`` channels; every multi-scale ``aggreg`` branch (k x k depthwise, then a 1x1 grouped conv
with one group per (head, q|k|v) slice) turns them into as many new heads; the attention heads are the
concatenation ``[original heads, 5x5 heads, ...]``, i.e. ``num_heads = heads * (1 + len(scales))``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..attention import KernelLayer, kernel_factory
from .conv import ConvNormAct, DropPath, LayerType, MBConv
from .fold import ChannelAffine, bn_scale_shift
from .resize import Resize, resize_embedding, resize_matrices, separable_resize

__all__ = ["QKVAggregation", "LiteMLA", "EfficientViTBlock"]


class QKVAggregation(nn.Module):
    """One multi-scale branch: k x k depthwise conv over all q/k/v channels, then a grouped 1x1 per slice."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.conv_pw = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(x))


def _channel_affine(norm: nn.Module) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(scale, shift) of a norm that is a fixed per-channel affine (eval BatchNorm, ChannelAffine), else None."""
    if isinstance(norm, ChannelAffine):
        return norm.scale_shift()
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats:
        return bn_scale_shift(norm)
    return None


class LiteMLA(nn.Module):
    """Multi-scale linear attention over a (B, C, H, W) map, returning (B, C, H, W).

    Args:
        dim: input and output channels C.
        head_dim: channels d per head; ``heads = int(C // d * heads_ratio)``.
        scales: kernel sizes of the multi-scale aggregation branches (official: ``(5,)``).
        kernel_layer: the attention kernel as a factory ``(head_dim, num_heads) -> nn.Module``, e.g.
            ``qtvit.attention.kernel_factory("qt")`` (default: "relu", EfficientViT's).
        norm_layer: norm of the output projection and of the QT shortcut (BatchNorm2d; pass eps via partial).
        pos_embed_size: (h, w) of a learnable positional embedding added to K (QT-ViT), or None.
        v_shortcut: add QT-ViT's ``GELU(BN(v))`` shortcut to the attention output.
    """

    def __init__(
        self,
        dim: int,
        head_dim: int = 32,
        heads_ratio: float = 1.0,
        scales: Sequence[int] = (5,),
        kernel_layer: Optional[KernelLayer] = None,
        norm_layer: LayerType = nn.BatchNorm2d,
        pos_embed_size: Optional[tuple[int, int]] = None,
        v_shortcut: bool = False,
    ) -> None:
        super().__init__()
        heads = int(dim // head_dim * heads_ratio)
        if heads < 1:
            raise ValueError(f"LiteMLA needs dim >= head_dim, got dim={dim}, head_dim={head_dim}")
        total_dim = heads * head_dim
        self.head_dim = head_dim
        self.num_heads = heads * (1 + len(scales))

        self.qkv = nn.Conv2d(dim, 3 * total_dim, 1, bias=False)
        self.aggreg = nn.ModuleList([QKVAggregation(3 * total_dim, s, groups=3 * heads) for s in scales])
        self.kernel = (kernel_layer or kernel_factory("relu"))(head_dim, self.num_heads)
        if pos_embed_size is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_heads * head_dim, *pos_embed_size))
        else:
            self.register_parameter("pos_embed", None)
        self.v_norm = norm_layer(head_dim) if v_shortcut else None
        # The official shortcut uses the exact (erf) GELU even where the network uses the tanh one.
        self.v_act = nn.GELU() if v_shortcut else None
        self.proj = ConvNormAct(self.num_heads * head_dim, dim, 1, norm_layer=norm_layer)
        # Set by cache_pos_embed (inference form): the embedding already resized to one token map, (1, E, N, d).
        self.register_buffer("pos_embed_cache", None, persistent=False)
        self.pos_embed_cache_hw: Optional[tuple[int, int]] = None
        self._resized: Optional[torch.Tensor] = None  # last no-grad resize of pos_embed, see pos_embed_tokens
        self._resized_key: Optional[tuple] = None

    def pos_embed_tokens(self, h: int, w: int) -> torch.Tensor:
        """The positional embedding for an h x w token map, token-major: (1, num_heads, h*w, head_dim)."""
        if self.pos_embed_cache is not None:
            if (h, w) != self.pos_embed_cache_hw:
                raise ValueError(
                    f"this LiteMLA was fused for a {self.pos_embed_cache_hw} token map but got {(h, w)}; fuse the "
                    "model again for the new input size (qtvit.models.inference.inference_form(model, input_size))"
                )
            return self.pos_embed_cache
        pe = self.pos_embed
        tracing = torch.jit.is_tracing()
        if pe.shape[-2:] == (h, w) and not tracing:  # a trace must keep the resize for other input sizes
            return pe.reshape(1, self.num_heads, self.head_dim, h * w).transpose(-1, -2)
        # Without autograd, the bicubic resize is cached: it is a large share of a forward at high resolution.
        # The key holds the parameter's version, which every in-place update (optimizer step, load) bumps.
        key = (h, w, pe._version, pe.dtype, pe.device)
        if not torch.is_grad_enabled() and not tracing and self._resized_key == key:
            return self._resized
        pe = separable_resize(pe, h, w)  # = F.interpolate(bicubic); exports as matmuls, not a dynamic Resize
        pe = pe.reshape(1, self.num_heads, self.head_dim, h * w).transpose(-1, -2)
        if not torch.is_grad_enabled() and not tracing:
            self._resized, self._resized_key = pe, key
        return pe

    def pos_embed_channels(self, h: int, w: int, resize: Optional[Resize] = None) -> torch.Tensor:
        """The positional embedding for an h x w token map, channel-major: (1, num_heads, head_dim, h*w).

        ``resize``: the interpolation matrices (h, h0) and, transposed, (w0, w) from the stored size, when the caller
        has them (``embedding_resize``); without them, they are built here. A trace keeps the resize conditional
        (``resize_embedding``): the exported graph skips it for maps of the stored size."""
        if self.pos_embed_cache is not None:
            return self.pos_embed_tokens(h, w).transpose(-1, -2)
        mh, mw_t = resize if resize is not None else self.embedding_resize(h, w)
        if (mh.shape[1], mw_t.shape[0]) != self.pos_embed.shape[-2:]:
            raise ValueError(f"interpolation matrices from {(mh.shape[1], mw_t.shape[0])} do not fit this layer's "
                             f"{tuple(self.pos_embed.shape[-2:])} positional embedding")
        return resize_embedding(self.pos_embed, mh, mw_t).reshape(1, self.num_heads, self.head_dim, h * w)

    def embedding_resize(self, h: int, w: int) -> Optional[Resize]:
        """The bicubic interpolation matrices (h, h0) and, transposed, (w0, w) from the stored embedding's size to an
        h x w map (None without an embedding): what ``pos_embed_channels`` takes, built once for a stage's blocks."""
        if self.pos_embed is None:
            return None
        pe = self.pos_embed
        return resize_matrices(h, w, *pe.shape[-2:], dtype=pe.dtype, device=pe.device)

    @torch.no_grad()
    def cache_pos_embed(self, hw: tuple[int, int]) -> None:
        """Resize the positional embedding once for a fixed token map so no interpolation runs in forward."""
        if self.pos_embed is None:
            return
        self.pos_embed_cache = None
        self.pos_embed_cache = self.pos_embed_tokens(*hw).detach().clone()
        self.pos_embed_cache_hw = tuple(hw)

    @torch.no_grad()
    def fuse(self) -> None:
        """Inference form: fold the projection BN into its conv and the shortcut BN into a per-channel affine."""
        self.proj.fuse()
        if isinstance(self.v_norm, nn.modules.batchnorm._BatchNorm):
            self.v_norm = ChannelAffine.from_batchnorm(self.v_norm)

    def forward(self, x: torch.Tensor, pos_embed_resize: Optional[Resize] = None) -> torch.Tensor:
        """``pos_embed_resize``: ``embedding_resize(H, W)`` of this map, shared by a stage's blocks while tracing
        (onnxruntime spends ~45 µs on each dynamic ``Resize`` that builds a matrix at 512 px)."""
        B, _, H, W = x.shape
        E, d, N = self.num_heads, self.head_dim, H * W
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [branch(qkv) for branch in self.aggreg], dim=1)
        if torch.jit.is_tracing():
            # An exported graph stays channel-major: q, k, v are (B, E, d, N) slices of qkv and the output is the
            # projection's layout, so onnxruntime runs no transposes around the attention (qtvit_1 ran 1.18-1.21x
            # and efficientvit_b1 1.05-1.11x faster so at 224-1024 px, docs/benchmarks.md).
            q, k, v = qkv.reshape(B, E, 3 * d, N).split(d, dim=2)
            if self.pos_embed is not None:
                k = k + self.pos_embed_channels(H, W, pos_embed_resize)
            out = self.kernel.forward_channels_first(q, k, v)
            if self.v_norm is not None:
                out = out + self.v_shortcut(v, channels_first=True).to(out.dtype)
            return self.proj(out.reshape(B, E * d, H, W))
        # token-major (B, E, N, 3d) once, so q, k, v are unit-stride along d (fast per-token norms in the kernel)
        q, k, v = qkv.reshape(B, E, 3 * d, N).transpose(-1, -2).contiguous().split(d, dim=-1)
        if self.pos_embed is not None:
            k = k + self.pos_embed_tokens(H, W)
        out = self.kernel(q, k, v)  # (B, E, N, d)
        if self.v_norm is not None:
            out = out + self.v_shortcut(v).to(out.dtype)
        return self.proj(out.transpose(-1, -2).reshape(B, E * d, H, W))

    def v_shortcut(self, v: torch.Tensor, channels_first: bool = False) -> torch.Tensor:
        """QT-ViT's GELU(BN(v)) on token-major v (B, E, N, d) (or channel-major (B, E, d, N)), BN over the d
        channels shared by all heads.

        BN and GELU act per token, so the official (√N x √N) image view is not needed: any H x W works. Outside
        training the BN is a per-channel affine and is applied along the channel axis directly: 10x faster at
        1024 px than the BN kernel on the transposed copy (measured 0.64 against 7.5 ms a layer).
        """
        norm = self.v_norm
        affine = _channel_affine(norm) if not self.training else None
        if affine is not None:
            scale, shift = (t.to(v.dtype).view(-1, 1) if channels_first else t.to(v.dtype) for t in affine)
            return self.v_act(torch.addcmul(shift, v, scale))
        if channels_first:
            return self.v_shortcut(v.transpose(-1, -2)).transpose(-1, -2)
        # In training, every token as one BN sample (B*E*N, d, 1, 1) of a contiguous copy: the same statistics as
        # the official (B*E, d, N, 1) view, but BN and GELU run on dense memory instead of a strided transpose:
        # fwd + bwd 10 against 39 ms for qtvit_pico at batch 128 on one CPU core.
        B, E, N, d = v.shape
        y = norm(v.contiguous().view(B * E * N, d, 1, 1))
        return self.v_act(y).view(B, E, N, d)

    def extra_repr(self) -> str:
        pe = None if self.pos_embed is None else tuple(self.pos_embed.shape[-2:])
        shortcut = self.v_norm is not None
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, pos_embed={pe}, v_shortcut={shortcut}"


class EfficientViTBlock(nn.Module):
    """``x + LiteMLA(x)`` then ``x + MBConv(x)`` (the MBConv is the FFN: biased 1x1 and 3x3, BN only at the end)."""

    def __init__(
        self,
        dim: int,
        head_dim: int = 32,
        expand_ratio: float = 4.0,
        scales: Sequence[int] = (5,),
        norm_layer: LayerType = nn.BatchNorm2d,
        act_layer: LayerType = nn.Hardswish,
        kernel_layer: Optional[KernelLayer] = None,
        pos_embed_size: Optional[tuple[int, int]] = None,
        v_shortcut: bool = False,
        drop_path: Union[float, tuple[float, float]] = 0.0,
    ) -> None:
        super().__init__()
        dp_attn, dp_ffn = (drop_path, drop_path) if isinstance(drop_path, (int, float)) else drop_path
        self.attn = LiteMLA(
            dim, head_dim, scales=scales, kernel_layer=kernel_layer, norm_layer=norm_layer,
            pos_embed_size=pos_embed_size, v_shortcut=v_shortcut,
        )
        self.drop_path = DropPath(dp_attn) if dp_attn > 0 else nn.Identity()
        self.ffn = MBConv(
            dim, dim, expand_ratio=expand_ratio, norm_layer=norm_layer, act_layer=act_layer, fewer_norm=True,
            residual=True, drop_path=dp_ffn,
        )

    def forward(self, x: torch.Tensor, pos_embed_resize: Optional[Resize] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x, pos_embed_resize))
        return self.ffn(x)
