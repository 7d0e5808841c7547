"""``tokenbench flops``: GFLOPs per clip through fvcore (attention counted) and the analytic cross-check."""
from __future__ import annotations

import torch

from tokenbench.datasets.decode import VideoDecodeError
from tokenbench.reducers import ReducerParamError, UnknownReducerError, get_reducer

from ..errors import UserError
from ..flops import count_flops
from ..model import MODEL_SIZES, build_model
from ..timing import load_clip, to_model_input
from .common import parse_params


def add_cli(sub) -> None:
    p = sub.add_parser(
        "flops", help="count GFLOPs per clip (fvcore with attention, and the analytic cross-check)",
        description="Trace one forward pass with fvcore (attention counted) and print GFLOPs per clip, the "
                    "analytic count from the token counts, and a per-layer breakdown. Without --video the "
                    "input is random noise: content-adaptive reducers (RLT) then keep every token.")
    p.add_argument("--model", default="vit_b", help="vit_t, vit_s, vit_b, vit_l or vit_h (default vit_b)")
    p.add_argument("--reducer", nargs="+", metavar=("NAME", "PARAM=VALUE"), default=None,
                   help="reducer and its parameters, e.g. --reducer rlt threshold=0.1")
    p.add_argument("--video", default=None, help="a video file: decoded, resized and centre-cropped")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--size", type=int, default=224, help="crop size in pixels (default 224)")
    p.add_argument("--stride", type=int, default=4, help="frame sampling stride for --video (default 4)")
    p.add_argument("--start", type=int, default=0, help="first frame of the clip for --video (default 0)")
    p.add_argument("--num-classes", type=int, default=400, help="head size (default 400, Kinetics-400)")
    p.add_argument("--layers", action="store_true", help="print the per-layer breakdown")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    if args.model not in MODEL_SIZES:
        raise UserError(f"unknown model {args.model!r}; choose from {', '.join(MODEL_SIZES)}")
    reducer = None
    if args.reducer:
        try:
            reducer = get_reducer(args.reducer[0], **parse_params(args.reducer[1:]))
        except (UnknownReducerError, ReducerParamError, TypeError) as exc:
            raise UserError(str(exc)) from exc
    try:
        model = build_model(args.model, args.num_classes, num_frames=args.frames, img_size=args.size)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if reducer is not None:
        try:
            reducer.check_geometry(model.grid, model.depth)
        except ReducerParamError as exc:
            raise UserError(str(exc)) from exc
    if args.video:
        try:
            clip = load_clip(args.video, args.frames, args.size, start=args.start, stride=args.stride)
        except VideoDecodeError as exc:
            raise UserError(str(exc)) from exc
        video, source = to_model_input(clip.unsqueeze(0)), args.video
    else:
        video = torch.randn(1, 3, args.frames, args.size, args.size, generator=torch.Generator().manual_seed(0))
        source = "random noise"
    r = count_flops(model, video, reducer)
    name = reducer if reducer is not None else "none"
    print(f"model {args.model}  input {args.frames}×{args.size}² ({source})  reducer {name}")
    print(f"tokens in: {r.tokens_in[0]} of {model.num_tokens}; after the last block: {r.tokens_per_layer[-1][0]}")
    print(f"GFLOPs per clip (fvcore + attention handles): {r.gflops:.2f}")
    print(f"  attention matmuls (QKᵀ, AV):                {r.attention_gflops:.2f} ({100 * r.attention_share:.1f}%)")
    print(f"  fvcore out of the box would report:         {r.fvcore_without_attention:.2f}")
    print(f"  inside reducer hooks (e.g. similarity):     {r.reducer_gflops:.2f}")
    print(f"analytic from token counts (backbone):        {r.analytic.mean:.2f} "
          f"({100 * r.relative_difference:.2f}% from fvcore's total, "
          f"{100 * r.backbone_difference:.3f}% from its backbone)")
    print("breakdown (GFLOPs per clip):")
    blocks = {k: sum(row[k] for row in r.by_layer)
              for k in ("attention_matmul", "attention_linear", "mlp", "norm", "reducer")}
    rows = [("patch_embed", r.by_module.get("patch_embed", 0.0))] + [(f"blocks: {k}", v) for k, v in blocks.items()]
    rows += [("fc_norm + head", r.by_module.get("fc_norm", 0.0) + r.by_module.get("head", 0.0))]
    for label, val in rows:
        print(f"  {label:<28} {val:10.3f}")
    if args.layers:
        print(f"  {'layer':>5} {'out':>7} {'attn mm':>9} {'attn lin':>9} {'mlp':>9} {'norm':>7} "
              f"{'reducer':>8} {'total':>9}")
        for i, row in enumerate(r.by_layer):
            print(f"  {i:>5} {r.tokens_per_layer[i][0]:>7} {row['attention_matmul']:9.3f} "
                  f"{row['attention_linear']:9.3f} {row['mlp']:9.3f} {row['norm']:7.3f} {row['reducer']:8.3f} "
                  f"{row['total']:9.3f}")
    return 0
