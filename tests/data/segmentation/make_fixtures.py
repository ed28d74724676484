"""Write the segmentation parity fixtures of this folder by running the OFFICIAL code (not part of this repository).

Usage, from anywhere, with an official checkout (or an export of its ``efficientvit/`` folder) at CHECKOUT:

    python tests/data/segmentation/make_fixtures.py --official CHECKOUT --source mit --commit de7d773 --out DIR
    python tests/data/segmentation/make_fixtures.py --official CHECKOUT --source amd --commit c6851a5 --out DIR

``mit`` is mit-han-lab/efficientvit, ``amd`` AMD-AIG-AIMA/AMD_QTViT (its ``seg.py`` on the QT-ViT backbones). Only
torch, numpy and einops are needed: the official package ``__init__`` files are bypassed and the two modules that pull
in more (triton's RMSNorm, the trainer's ``Scheduler``) are replaced by stubs that these models never call.
Nothing here runs in the test suite; the tests read the JSON files it writes.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for oracle_weights
from oracle_weights import fill  # noqa: E402

# the official constructors that exist, and the BN eps their model zoos set (set_norm_eps on the whole model):
# mit-han-lab's seg_model_zoo.py: 1e-5 for B, 1e-7 for L; AMD's: 1e-7 for L, the BatchNorm default (1e-5) for B.
VARIANTS = [("b0", "cityscapes")] + [(a, d) for a in ("b1", "b2", "b3", "l1", "l2") for d in ("cityscapes", "ade20k")]
INPUT_SEED, PROBE_SEED, CORNER = 4321, 99, 2
# 96 x 64: non-square, and multiples of 32, as the official head needs (it upsamples by fixed factors). AMD's QT
# attention reshapes the tokens of a map into a square (its forward fails on non-square maps): 96 x 96 there.
INPUT = {"mit": [2, 3, 96, 64], "amd": [2, 3, 96, 96]}


def _import_official(root: Path):
    """``efficientvit.models.efficientvit.seg`` of the checkout at ``root``, without its package ``__init__`` files."""
    pkg = root / "efficientvit"
    for name, path in [("efficientvit", pkg), ("efficientvit.models", pkg / "models"),
                       ("efficientvit.models.efficientvit", pkg / "models" / "efficientvit"),
                       ("efficientvit.apps", pkg / "apps"), ("efficientvit.apps.trainer", pkg / "apps" / "trainer")]:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]  # a namespace-like package: submodules import, __init__ does not run
        sys.modules[name] = module
    run_config = types.ModuleType("efficientvit.apps.trainer.run_config")
    run_config.Scheduler = type("Scheduler", (), {"PROGRESS": 0})  # drop.py's import; used in training only
    sys.modules[run_config.__name__] = run_config
    triton = types.ModuleType("efficientvit.models.nn.triton_rms_norm")  # MIT only; no RMSNorm in these models
    triton.__all__ = ["TritonRMSNorm2dFunc"]
    triton.TritonRMSNorm2dFunc = None
    sys.modules[triton.__name__] = triton
    sys.path.insert(0, str(root))
    import efficientvit.models.efficientvit.seg as seg
    from efficientvit.models.nn.norm import set_norm_eps

    return seg, set_norm_eps


def _projections(out: torch.Tensor) -> dict:
    w = torch.randn((8,) + tuple(out.shape[1:]), generator=torch.Generator().manual_seed(PROBE_SEED),
                    dtype=torch.float64)
    return dict(pooled=out.mean(dim=(2, 3)).tolist(), probes=torch.einsum("bchw,pchw->bp", out, w).tolist(),
                probe_seed=PROBE_SEED, corner=out[..., :CORNER, :CORNER].tolist())


def make(seg, set_norm_eps, source: str, arch: str, dataset: str, commit: str) -> dict:
    model = getattr(seg, f"efficientvit_seg_{arch}")(dataset=dataset)
    eps = 1e-7 if arch.startswith("l") else (1e-5 if source == "mit" else None)
    set_norm_eps(model, eps)
    model.load_state_dict(fill(model.state_dict()))
    model = model.double().eval()
    x = torch.randn(*INPUT[source], generator=torch.Generator().manual_seed(INPUT_SEED), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    sd = model.state_dict()
    return dict(source=source, model=arch, dataset=dataset, commit=commit, norm_eps=eps,
                keys=[[k, list(v.shape)] for k, v in sd.items()], num_keys=len(sd),
                params=sum(p.numel() for p in model.parameters()), input=INPUT[source], input_seed=INPUT_SEED,
                output_shape=list(out.shape), **_projections(out))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="official checkout (holds efficientvit/)")
    parser.add_argument("--source", choices=["mit", "amd"], required=True)
    parser.add_argument("--commit", required=True, help="the checkout's commit, recorded in every file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="variants such as b1_ade20k (default: all)")
    args = parser.parse_args(argv)
    seg, set_norm_eps = _import_official(args.official.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    for arch, dataset in VARIANTS:
        if args.only and f"{arch}_{dataset}" not in args.only:
            continue
        if (args.source, arch) == ("amd", "b0"):
            continue  # AMD's seg.py has a QT-ViT B0 head, but there is no QT-ViT on B0 in either zoo
        ref = make(seg, set_norm_eps, args.source, arch, dataset, args.commit)
        h, w = ref["input"][2:]
        path = args.out / f"seg_{args.source}_{arch}_{dataset}_r{h}x{w}.json"
        path.write_text(json.dumps(ref, separators=(",", ":")))
        print(f"{path.name}: {ref['params']} params, output {ref['output_shape']}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
