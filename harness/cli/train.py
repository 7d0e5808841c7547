"""``tokenbench train``: train or fine-tune a model with a reducer active (data-parallel under torchrun)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from tokenbench.datasets import get_dataset

from ..checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from ..errors import UserError
from ..model import build_model
from ..suite.validate import device_problem
from ..train import DEFAULTS, TrainRecipe, train
from .common import parse_params, reducer_from, require_output_file


def add_cli(sub) -> None:
    p = sub.add_parser(
        "train", help="train / fine-tune a model with a reducer active; report wall-clock, tokens and top-1",
        description="Train (or fine-tune with --init) a model on a dataset with a token reducer in the forward "
                    "pass, then evaluate top-1 on the validation split. Runs data-parallel under torchrun "
                    "(torchrun --nproc-per-node 2 -m tokenbench.harness.cli train ...).",
        epilog="example:\n  tokenbench train --model vit_t --dataset synthetic --reducer rlt threshold=0.1 "
               "--epochs 6 --out ckpt.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_t", help="vit_t, vit_s, vit_b, vit_l, vit_h (default vit_t)")
    p.add_argument("--dataset", default="synthetic", help="dataset name for get_dataset (default synthetic)")
    p.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE",
                   help="dataset options, e.g. num_clips=1000 static_share=0.8 (both splits)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--reducer", nargs="+", default=["none"], metavar=("NAME", "KEY=VALUE"),
                   help="reducer and its parameters, e.g. --reducer rlt threshold=0.1 length_embedding=True")
    p.add_argument("--eval-reducer", nargs="+", default=None, metavar=("NAME", "KEY=VALUE"),
                   help="reducer at evaluation (default: the training reducer without its train-time-only "
                        "parts: random masking off, rlt_random → rlt); 'none' for none")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="global batch size")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--min-lr", type=float, default=DEFAULTS["min_lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--warmup-epochs", type=float, default=DEFAULTS["warmup_epochs"])
    p.add_argument("--label-smoothing", type=float, default=DEFAULTS["label_smoothing"])
    p.add_argument("--clip-grad", type=float, default=DEFAULTS["clip_grad"], help="0 disables")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 autocast: on, off, or auto (on where the hardware has native bf16 matmuls: "
                        "CUDA, or a CPU with AMX / AVX512-BF16; default). Compare reducers' training speed "
                        "with --amp off on a CPU (see the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--log-every", type=int, default=0, metavar="STEPS", help="progress line every STEPS steps")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="fine-tune: load these weights first (a head of another size is re-initialised)")
    p.add_argument("--out", default=None, metavar="CKPT", help="write the trained checkpoint here")
    p.add_argument("--json", default=None, metavar="PATH", help="write the TrainResult here as JSON")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    require_output_file("--out", args.out)
    require_output_file("--json", args.json)
    problem = device_problem(args.device)
    if problem:
        raise UserError(f"--device {args.device}: {problem}; use --device cpu or auto")
    if args.threads:
        torch.set_num_threads(args.threads)
    reducer = reducer_from(args.reducer)
    eval_red: Any = reducer_from(args.eval_reducer) if args.eval_reducer else "auto"  # not given: the rule
    data_opts = parse_params(args.data)
    if args.init:  # a checkpoint that cannot be read fails before the training split is built (it may render)
        try:
            read_checkpoint(args.init, meta=True)
        except CheckpointError as exc:
            raise UserError(f"--init: {exc}") from None
    try:
        train_ds = get_dataset(args.dataset, args.train_split, num_frames=args.num_frames, img_size=args.img_size,
                               **data_opts)
        val_ds = get_dataset(args.dataset, args.val_split, num_frames=args.num_frames, img_size=args.img_size,
                             **data_opts) if args.val_split else None
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from exc
    if not train_ds.num_classes:
        raise UserError(f"dataset {args.dataset!r} is unlabelled; training needs labels")
    length_embedding = bool(reducer.length_embedding)
    torch.manual_seed(args.seed)
    model = build_model(args.model, train_ds.num_classes, num_frames=args.num_frames, img_size=args.img_size,
                        length_embedding=length_embedding, drop_path_rate=args.drop_path)
    if args.init:
        try:
            info = load_checkpoint(model, args.init, strict=False)
        except CheckpointError as exc:
            raise UserError(f"--init: {exc}") from None
        if info.missing:
            print(f"fine-tuning from {args.init}; newly initialised: {', '.join(info.missing)}", file=sys.stderr)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                         label_smoothing=args.label_smoothing, min_lr=args.min_lr, clip_grad=args.clip_grad or None,
                         amp={"auto": "auto", "on": True, "off": False}[args.amp], seed=args.seed,
                         max_steps=args.max_steps, num_workers=args.num_workers)
    result = train(model, train_ds, val_ds, reducer, recipe, device=args.device, out=args.out,
                   eval_reducer=eval_red, log_every=args.log_every)
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    if int(os.environ.get("RANK", "0")) == 0:
        top = f"top-1 {result.top1:.2f}%" if result.top1 is not None else "no evaluation"
        print(f"{args.model} {reducer!r}: {top}, {result.wall_s:.1f} s to train "
              f"({result.wall_s / result.epochs:.1f} s/epoch), {result.tokens_mean:.1f} tokens/clip"
              + (f", checkpoint {args.out}" if args.out else ""))
    return 0
