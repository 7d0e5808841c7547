"""``tokenbench checkpoint PATH``: what a checkpoint is (layout, files, weights' sha256, config, classes) and,
with ``--model``, whether it fits that model; nothing is measured."""
from __future__ import annotations

import warnings

import torch

from ..checkpoint import CheckpointError, load_checkpoint, read_checkpoint, short_hash
from ..errors import UserError
from ..model import MODEL_SIZES, PATCH, TUBELET, build_model
from .common import require_at_least


def add_cli(sub) -> None:
    p = sub.add_parser("checkpoint", help="a checkpoint's layout, sha256, config, classes; its fit",
                       description="Read a checkpoint the way 'tokenbench run' does (a transformers model "
                                   "directory, a .safetensors / .bin / .pth file in transformers' or "
                                   "VideoMAE's layout) and print its layout, the files read, its weights' "
                                   "sha256 (how records and reports name it), its config.json and class "
                                   "names. With --model, load it into that model and report what does not "
                                   "fit.")
    p.add_argument("path", help="checkpoint file or transformers model directory")
    p.add_argument("--model", default=None, help="check it fits this model size (vit_t … vit_g)")
    p.add_argument("--frames", type=int, default=16, help="with --model: frames per clip (default 16)")
    p.add_argument("--size", type=int, default=224, help="with --model: image size (default 224)")
    p.add_argument("--classes", type=int, default=0, help="with --model: classes (default: the checkpoint's)")
    p.add_argument("--show-classes", type=int, default=10, metavar="N",
                   help="class names to print (default 10)")
    p.set_defaults(func=run)


def check_shape_options(args) -> None:
    """``--model`` and its shape options, refused in a sentence before any weights are read."""
    if args.model is not None and args.model not in MODEL_SIZES:
        raise UserError(f"unknown model {args.model!r}; choose from {', '.join(MODEL_SIZES)}")
    require_at_least(args, {"frames": TUBELET, "size": PATCH, "classes": 0})
    if args.frames % TUBELET or args.size % PATCH:
        raise UserError(f"--frames must be even and --size a multiple of {PATCH} ({TUBELET}×{PATCH}×{PATCH} "
                        f"tubelets); got {args.frames} frames × {args.size}²")


def run(args) -> int:
    check_shape_options(args)
    try:
        ck = read_checkpoint(args.path)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    print(f"{ck.path}: {ck.layout} layout, {len(ck.state)} tensors, "
          f"{sum(t.numel() for t in ck.state.values()) / 1e6:.1f}M weights")
    print(f"  sha256 {ck.sha256} (reports: {short_hash(ck.sha256)})")
    for f in ck.files:
        print(f"  file   {f}")
    blocks, fc = ck.norm_eps
    print(f"  LayerNorm eps: blocks {blocks:g}, fc_norm {fc:g}"
          + ("" if ck.config or ck.layout != "transformers" else " (transformers' defaults: no config.json)"))
    if ck.config:
        c = ck.config
        head = f"{c.num_classes} classes" if c.num_classes else "no head"
        print(f"  config {c.source}: {c.num_frames} frames × {c.img_size}², width {c.width}, "
              f"depth {c.depth}, {c.heads} heads, MLP {c.mlp}, {head}")
    names = ck.class_names
    if names:
        shown = ", ".join(f"{i}: {n}" for i, n in enumerate(names[:args.show_classes]))
        print(f"  classes {shown}" + (f", … ({len(names)} in all)" if len(names) > args.show_classes else ""))
    elif ck.num_classes:
        print(f"  classes {ck.num_classes} (unnamed)")
    if args.model:
        classes = args.classes or ck.num_classes or 1
        with torch.device("meta"):  # shapes only: nothing is allocated
            model = build_model(args.model, classes, num_frames=args.frames, img_size=args.size)
        try:
            with warnings.catch_warnings():  # copying into a meta model is a no-op, as intended here
                warnings.simplefilter("ignore", UserWarning)
                report = load_checkpoint(model, ck, strict=False)
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
        print(f"fits {args.model} ({args.frames}×{args.size}², {classes} classes)"
              + (f"; lacks {', '.join(report.missing)}" if report.missing else "")
              + (f"; ignores {len(report.unexpected)} weights: {', '.join(report.unexpected[:4])}"
                 if report.unexpected else ""))
    return 0
