"""A fused CPU kernel for qt's inference: the whole linear attention of one (batch, head) row in two passes over the
tokens, nothing N-sized in memory but the output.

Eager PyTorch computes qt as a dozen N-sized passes (the keys' squares, their norms, the division, the state product,
the key sum, the queries' squares and norms, two products, the read); each is memory- and dispatch-bound at a head
dim of 16, so qt costs ~1.7x a minimal ReLU attention there although its arithmetic is about the same. Here each key
token is squared, normalised and added to the state (S += f vᵀ, z += f) while it is in registers, and each query
token is squared, normalised and read against the state in the same way. The maths is ``linear_attention``'s shifted
read (``core._shift_state`` / ``core._read_shifted``), which the tests compare it against.

The extension is compiled with torch.utils.cpp_extension (a C++ compiler and ninja; 20-45 s once, then cached in
$TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions), ahead of time by ``build()`` (``qtvit build-ext``, which
the install scripts run) or else on the first qt forward at MIN_TOKENS keys or more, with one line on stderr before
the build and its time after. The build's name covers everything the binary depends on (source, flags, compiler,
include paths, torch and Python, the CPU), so environments never overwrite each other's builds. Where a build is
impossible, ``available()`` is False and qt runs its eager path, after one warning. Set QTVIT_NO_CPP=1 to never
build or use it. Inference only: inputs that need gradients take the eager path.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "build", "usable", "qt_attention", "disabled", "NO_BUILD_ENV"]

NO_BUILD_ENV = "QTVIT_NO_CPP"  # "1": never build or use the extension

MAX_HEAD_DIM = 64  # per-token scratch lives on the stack
# Below this many keys the torch ops cost about the same (a 7x7 map has 49 tokens), and a small job (a 28 px
# classifier's evaluation) should not pay the ~30 s build.
MIN_TOKENS = 256

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

// qt linear attention, float32, contiguous (R, Nk, d) keys, (R, Nk, e) values, (R, Nq, d) queries, R = batch x heads.
// f(x) = x^2 / ||x^2|| (norm floored at sqrt(FLT_MIN)); constant feature c with c2 = c^2; b = c2 Nk + eps.
// Pass 1: S = sum_n f(k_n) v_n^T, z = sum_n f(k_n), vsum = sum_n v_n. Shift: m = c2 vsum / b, S' = S - z m^T.
// Pass 2: for each query, x = q^2, t = ||x||: out = m + (x S') / (x . z + t b)   (f(q) = x / t, folded).
// The general row: any d, e up to 64.
void qt_row(const float* __restrict__ kr, const float* __restrict__ vr, const float* __restrict__ qr,
            float* __restrict__ orow, int64_t Nk, int64_t Nq, int64_t d, int64_t e, int64_t sk, int64_t sv,
            int64_t sq, float c2, float b) {
  const float floor_norm = std::sqrt(std::numeric_limits<float>::min());
  float S[64 * 64], z[64], vsum[64], m[64], x[64], num[64];
  std::fill(S, S + d * e, 0.f);
  std::fill(z, z + d, 0.f);
  std::fill(vsum, vsum + e, 0.f);
  for (int64_t n = 0; n < Nk; ++n) {
    const float* kn = kr + n * sk;
    const float* vn = vr + n * sv;
    float ss = 0.f;
    for (int64_t i = 0; i < d; ++i) { x[i] = kn[i] * kn[i]; ss += x[i] * x[i]; }
    const float inv = 1.f / std::max(std::sqrt(ss), floor_norm);
    for (int64_t j = 0; j < e; ++j) vsum[j] += vn[j];
    for (int64_t i = 0; i < d; ++i) {
      const float fi = x[i] * inv;
      z[i] += fi;
      for (int64_t j = 0; j < e; ++j) S[i * e + j] += fi * vn[j];
    }
  }
  for (int64_t j = 0; j < e; ++j) m[j] = c2 * vsum[j] / b;
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < e; ++j) S[i * e + j] -= z[i] * m[j];
  for (int64_t n = 0; n < Nq; ++n) {
    const float* qn = qr + n * sq;
    float ss = 0.f, den = 0.f;
    for (int64_t i = 0; i < d; ++i) { x[i] = qn[i] * qn[i]; ss += x[i] * x[i]; den += x[i] * z[i]; }
    den += std::max(std::sqrt(ss), floor_norm) * b;
    for (int64_t j = 0; j < e; ++j) num[j] = 0.f;
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < e; ++j) num[j] += x[i] * S[i * e + j];
    const float inv_den = 1.f / den;
    float* on = orow + n * e;
    for (int64_t j = 0; j < e; ++j) on[j] = m[j] + num[j] * inv_den;
  }
}

// The same for d = e = D, a multiple of 16, in 16-float vectors (GCC/Clang vector extensions: one AVX-512 register,
// or two AVX2 ones) of C = D / 16 column chunks: for D = 16 the 16 x 16 state stays in registers, and each token
// costs D x C broadcast multiply-adds per pass.
typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float* p) { v16 r; std::memcpy(&r, p, sizeof r); return r; }
static inline float hsum16(v16 a) {  // a tree: 4 dependent adds, not 15
  float t[16];
  std::memcpy(t, &a, sizeof t);
  for (int w = 8; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}

template <int D>
void qt_rowv(const float* __restrict__ kr, const float* __restrict__ vr, const float* __restrict__ qr,
             float* __restrict__ orow, int64_t Nk, int64_t Nq, int64_t sk, int64_t sv, int64_t sq, float c2,
             float b) {
  constexpr int C = D / 16;
  const float floor_norm = std::sqrt(std::numeric_limits<float>::min());
  v16 S[D * C], z[C], vsum[C], m[C], x[C], vv[C];
  for (auto& t : S) t = v16{};
  for (int c = 0; c < C; ++c) z[c] = vsum[c] = v16{};
  for (int64_t n = 0; n < Nk; ++n) {
    float ss = 0.f;
    for (int c = 0; c < C; ++c) {
      const v16 kv = load16(kr + n * sk + 16 * c);
      x[c] = kv * kv;
      ss += hsum16(x[c] * x[c]);
      vv[c] = load16(vr + n * sv + 16 * c);
    }
    const float inv = 1.f / std::max(std::sqrt(ss), floor_norm);
    for (int c = 0; c < C; ++c) { x[c] *= inv; z[c] += x[c]; vsum[c] += vv[c]; }
    for (int i = 0; i < D; ++i) {
      const float fi = x[i / 16][i % 16];
      for (int c = 0; c < C; ++c) S[i * C + c] += fi * vv[c];
    }
  }
  for (int c = 0; c < C; ++c) m[c] = vsum[c] * (c2 / b);
  for (int i = 0; i < D; ++i)
    for (int c = 0; c < C; ++c) S[i * C + c] -= z[i / 16][i % 16] * m[c];
  for (int64_t n = 0; n < Nq; ++n) {
    float ss = 0.f, den = 0.f;
    for (int c = 0; c < C; ++c) {
      const v16 qv = load16(qr + n * sq + 16 * c);
      x[c] = qv * qv;
      ss += hsum16(x[c] * x[c]);
      den += hsum16(x[c] * z[c]);
    }
    den += std::max(std::sqrt(ss), floor_norm) * b;
    v16 acc[C][4];  // four partial sums per chunk: a chain of D / 4 multiply-adds instead of D
    for (int c = 0; c < C; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = v16{};
    for (int i = 0; i < D; ++i) {
      const float xi = x[i / 16][i % 16];
      for (int c = 0; c < C; ++c) acc[c][i % 4] += xi * S[i * C + c];
    }
    const float inv_den = 1.f / den;
    for (int c = 0; c < C; ++c) {
      const v16 o = m[c] + ((acc[c][0] + acc[c][1]) + (acc[c][2] + acc[c][3])) * inv_den;
      std::memcpy(orow + n * D + 16 * c, &o, sizeof o);
    }
  }
}

// (B, H, N, d) q, k and (B, H, N, e) v with unit-stride channels and any other strides (e.g. views of one qkv
// tensor); returns a contiguous (B, H, Nq, e).
torch::Tensor qt_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, double c2d, double eps) {
  const int64_t B = k.size(0), H = k.size(1), Nk = k.size(2), d = k.size(3), e = v.size(3), Nq = q.size(2);
  TORCH_CHECK(d <= 64 && e <= 64, "qt_forward: head dims up to 64");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "qt_forward: unit-stride channels");
  auto out = torch::empty({B, H, Nq, e}, v.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float c2 = static_cast<float>(c2d);
  const float b = static_cast<float>(c2d * static_cast<double>(Nk) + eps);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bi = r / H, hi = r % H;
      const float* kr = kp + bi * k.stride(0) + hi * k.stride(1);
      const float* vr = vp + bi * v.stride(0) + hi * v.stride(1);
      const float* qr = qp + bi * q.stride(0) + hi * q.stride(1);
      float* orow = op + r * Nq * e;
      if (d == 16 && e == 16)
        qt_rowv<16>(kr, vr, qr, orow, Nk, Nq, k.stride(2), v.stride(2), q.stride(2), c2, b);
      else if (d == 32 && e == 32)
        qt_rowv<32>(kr, vr, qr, orow, Nk, Nq, k.stride(2), v.stride(2), q.stride(2), c2, b);
      else
        qt_row(kr, vr, qr, orow, Nk, Nq, d, e, k.stride(2), v.stride(2), q.stride(2), c2, b);
    }
  });
  return out;
}
"""

_lock = threading.Lock()
_module: object | None = None
_failed = False
_off = threading.local()


@contextlib.contextmanager
def disabled():
    """qt takes the shared core's torch ops inside this block (for comparisons; this thread only)."""
    before = getattr(_off, "on", False)
    _off.on = True
    try:
        yield
    finally:
        _off.on = before


def _flags() -> list[str]:
    # -fopenmp: at::parallel_for splits the rows over torch's threads (the process already holds torch's libgomp.so.1,
    # which the extension then shares); without it the rows run on one thread
    return ["-O3", "-fopenmp"] + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])


def _compiler_id() -> str:
    """The C++ compiler torch would use ($CXX, else c++) and its version line."""
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"{shutil.which(cxx) or cxx} {out.splitlines()[0] if out else ''}"


def _build_name(include_paths: list[str] | None = None) -> str:
    """One build per everything the binary depends on: the source and flags, the compiler, the include paths (two
    environments with the same torch version have different headers' paths), torch, Python and the CPU
    (-march=native code must not be reused on another processor)."""
    from torch.utils.cpp_extension import include_paths as torch_includes
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        cpu = ""
    includes = include_paths if include_paths is not None else torch_includes()
    key = "\n".join([_SOURCE, " ".join(_flags()), _compiler_id(), *includes, sysconfig.get_paths()["include"],
                     torch.__version__, sys.version, platform.machine(), cpu])
    return "qtvit_qt_cpu_" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _build_dir(name: str) -> Path:
    from torch.utils.cpp_extension import get_default_build_root
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def _compile() -> object:
    """Load the extension, compiling it first when its build folder has no binary yet (said on stderr, timed)."""
    from torch.utils.cpp_extension import load_inline
    name = _build_name()
    folder = _build_dir(name)
    fresh = not any(folder.glob(f"{name}*.so")) and not any(folder.glob(f"{name}*.pyd"))
    if fresh:
        print(f"qtvit: building the fused CPU kernel for qt once into {folder} (20-45 s; `qtvit build-ext` does it "
              f"ahead of time, {NO_BUILD_ENV}=1 skips it)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    module = load_inline(name, cpp_sources=[_SOURCE], functions=["qt_forward"], extra_cflags=_flags(),
                         extra_ldflags=["-fopenmp"], build_directory=str(folder), verbose=False)
    if fresh:
        print(f"qtvit: fused CPU kernel built in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return module


def _load() -> object | None:
    global _module, _failed
    if _module is not None or _failed:
        return _module
    with _lock:
        if _module is not None or _failed:
            return _module
        if os.environ.get(NO_BUILD_ENV) == "1":
            _failed = True
            return None
        try:
            _module = _compile()
        except Exception as e:  # no compiler, no ninja, a read-only cache: the eager path stays correct
            _failed = True
            warnings.warn(f"qtvit: the fused CPU kernel for qt could not be built ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); qt runs its eager path. Install a C++ "
                          f"compiler and ninja (pip install ninja) for the fast path, or set {NO_BUILD_ENV}=1 to "
                          "silence this.", RuntimeWarning, stacklevel=3)
    return _module


def usable(q: Tensor, k: Tensor, v: Tensor, scale: Tensor) -> bool:
    """Whether ``qt_attention`` applies: CPU float32 (B, H, N, d) inputs with unit-stride channels, head dims up to
    MAX_HEAD_DIM, at least MIN_TOKENS keys, no gradients wanted, and not inside a tracer, an exporter, torch.compile
    or a dispatch mode such as FlopCounterMode (they need torch ops)."""
    if getattr(_off, "on", False):
        return False
    ts = (q, k, v)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != 4 or t.stride(-1) != 1 for t in ts):
        return False
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM or k.shape[2] < MIN_TOKENS:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, scale)):
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    # a dispatch mode (FLOP counter, fake tensors, a profiler of ops) must see the attention as torch ops
    return not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0


def available() -> bool:
    """True once the extension is built (builds it on the first call)."""
    return _load() is not None


build = available  # the warm-up's name: build (or load) now, so that no forward pass waits for it


def qt_attention(q: Tensor, k: Tensor, v: Tensor, scale: Tensor, eps: float) -> Tensor:
    """qt's linear attention (``QTKernel``'s maths) for (B, H, N, d) q, k and (B, H, N, e) v; check ``usable`` and
    ``available`` first."""
    c = float(scale)
    return _load().qt_forward(q, k, v, c * c, eps)
