"""``tokenbench flops``: GFLOPs per clip through fvcore (attention counted) and the analytic cross-check."""
from __future__ import annotations

import sys

import torch

from tokenbench.datasets.decode import VideoDecodeError, read_video
from tokenbench.datasets.transforms import eval_transform
from tokenbench.reducers import ReducerParamError, UnknownReducerError, get_reducer

from ..errors import UserError
from ..flops import count_flops
from ..model import MODEL_SIZES, build_model
from ..timing import sample_frames, to_model_input
from .common import parse_params, require_at_least, require_file


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


# the smallest value each option can take: one tubelet (2 frames × 16²), a head of one class
MINIMUMS = {"frames": 2, "size": 16, "stride": 1, "start": 0, "num_classes": 1}


def video_clip(args) -> torch.Tensor:
    """The clip ``--video``, ``--start``, ``--stride`` name; a start past the video's end is refused (it would
    count a clip of its last frame repeated), a clip running past it is said (its last frame repeats)."""
    try:
        frames = torch.from_numpy(read_video(args.video, max_frames=args.start + (args.frames - 1) * args.stride + 1))
    except VideoDecodeError as exc:
        raise UserError(str(exc)) from exc
    n = frames.shape[0]
    if args.start >= n:
        raise UserError(f"--start {args.start} is past the end of {args.video} ({n} frames)")
    past = sum(1 for i in range(args.frames) if args.start + i * args.stride >= n)
    if past:
        print(f"note: {args.video} has {n} frames: the clip's last {past} of {args.frames} (from frame "
              f"{args.start}, stride {args.stride}) repeat its last frame", file=sys.stderr)
    return eval_transform(sample_frames(frames, args.frames, args.start, args.stride), args.size)


def run_cli(args) -> int:
    if args.model not in MODEL_SIZES:
        raise UserError(f"unknown model {args.model!r}; choose from {', '.join(MODEL_SIZES)}")
    require_at_least(args, MINIMUMS)
    if args.frames % 2 or args.size % 16:
        raise UserError(f"--frames must be even and --size a multiple of 16 (2×16×16 tubelets); "
                        f"got {args.frames} frames × {args.size}²")
    if args.video:
        require_file("--video", args.video)
    reducer = get_reducer("none")
    if args.reducer:
        try:
            reducer = get_reducer(args.reducer[0], **parse_params(args.reducer[1:]))
        except (UnknownReducerError, ReducerParamError, TypeError) as exc:
            raise UserError(str(exc)) from exc
    try:
        model = build_model(args.model, args.num_classes, num_frames=args.frames, img_size=args.size)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    try:
        reducer.check_geometry(model.grid, model.depth)
    except ReducerParamError as exc:
        raise UserError(str(exc)) from exc
    if args.video:
        video, source = to_model_input(video_clip(args).unsqueeze(0)), args.video
    else:
        video = torch.randn(1, 3, args.frames, args.size, args.size, generator=torch.Generator().manual_seed(0))
        source = "random noise"
    r = count_flops(model, video, reducer)
    name = reducer
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
