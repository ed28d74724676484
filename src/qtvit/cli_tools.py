"""``qtvit list-models`` and ``qtvit build-ext``: what a newcomer asks first (which models, which have weights) and
the one-time build of qt's fused CPU kernel, done ahead of time so that no forward pass waits for it."""
from __future__ import annotations

import argparse
import sys
import time

__all__ = ["add_list_models_parser", "add_build_ext_parser"]


def add_list_models_parser(subparsers) -> None:
    p = subparsers.add_parser("list-models", help="the model names (qtvit.list_models)",
                              description="Print the registered model names, one a line.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'qtvit_*'")
    p.add_argument("--pretrained", action="store_true", help="only models with official weights")
    p.set_defaults(func=_list_models)


def _list_models(args: argparse.Namespace) -> int:
    from .models import list_models
    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        print(f"no model matches {args.pattern!r}; `qtvit list-models` lists them all", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


def add_build_ext_parser(subparsers) -> None:
    p = subparsers.add_parser("build-ext", help="build qt's fused CPU kernel now (once per environment)",
                              description="Compile qt's fused CPU attention kernel (C++, 20-45 s, cached in "
                                          "$TORCH_EXTENSIONS_DIR) so that the first forward pass does not wait for "
                                          "it. QTVIT_NO_CPP=1 turns the kernel off. Guide: docs/kernels.md")
    p.set_defaults(func=_build_ext)


def _build_ext(args: argparse.Namespace) -> int:
    from .attention import cpu_fused
    t0 = time.perf_counter()
    if cpu_fused.build():
        print(f"qt's fused CPU kernel is ready ({time.perf_counter() - t0:.1f} s)")
        return 0
    print(f"qt's fused CPU kernel is not available here ({cpu_fused.NO_BUILD_ENV}=1, or no C++ compiler/ninja: see "
          "the warning above); qt runs its eager path", file=sys.stderr)
    return 1
