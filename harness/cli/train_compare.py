"""Training with and without a reducer on the same data, same recipe, same initial weights: the RLT paper's
training table on the synthetic benchmark.

    python -m tokenbench.harness.train_compare                      # none vs rlt τ=0.1 (defaults)
    python -m tokenbench.harness.train_compare --arm none --arm "rlt threshold=0.1" \\
        --arm "rlt threshold=0.1 length_embedding=True" --arm "rlt_random threshold=0.1 keep=0.75" \\
        --out results/train_compare.json

Each arm builds ``vit_t`` from the same seed (with the length embedding when the arm asks for it), trains
it with :func:`tokenbench.harness.train.train` (the :data:`~tokenbench.harness.train.DEFAULTS` recipe
unless overridden) and evaluates on the val split with the arm's inference reducer. Arms run one after
the other in this process, so they share the machine state; the table gives wall-clock to train,
seconds per epoch, clips/s, tokens per clip in training and at evaluation, and top-1 — plus the speed-up
of each arm over the first. Wall-clock on a shared machine is only as good as the machine was quiet:
the table records threads and the host load average before and after each arm.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from tokenbench.datasets import get_dataset

from ..fingerprint import fingerprint, load_average
from ..model import build_model
from ..train import DEFAULTS, TrainRecipe, train
from .common import parse_params, reducer_from, require_output_file

PROG = "python -m tokenbench.harness.train_compare"


def _arm(spec: str):
    reducer = reducer_from(shlex.split(spec))
    return ("none" if reducer.identity else spec), reducer


def add_cli(sub) -> None:
    p = sub.add_parser("train-compare", help="train arms (reducers) on the same data and recipe; the training table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=lambda args: compare(args, sys.argv[1:]))


def main(argv: list[str] | None = None) -> int:
    """``python -m tokenbench.harness.train_compare`` (the spelling committed READMEs use)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return compare(args, sys.argv[1:] if argv is None else argv, prog=PROG)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arm", action="append", default=None, metavar="'NAME KEY=VALUE …'",
                   help="a reducer with its parameters, quoted; repeat (default: none, then rlt threshold=0.1)")
    p.add_argument("--model", default="vit_t")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE", help="dataset options (both splits)")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--img-size", type=int, default=112)
    for k in ("epochs", "batch_size"):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=DEFAULTS[k])
    for k in ("lr", "weight_decay", "warmup_epochs", "label_smoothing"):
        p.add_argument("--" + k.replace("_", "-"), type=float, default=DEFAULTS[k])
    p.add_argument("--amp", choices=("auto", "on", "off"), default="off",
                   help="bfloat16 autocast (default off: on a CPU bf16 favours the dense baseline's kernel "
                        "shapes over packed sequences, see harness/train.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write every arm's TrainResult here (JSON)")


def compare(args, args_typed: list[str], prog: str = "tokenbench") -> int:
    """Train every arm, print the table, write ``--out``."""
    require_output_file("--out", args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [_arm(a) for a in (args.arm or ["none", "rlt threshold=0.1"])]
    opts = parse_params(args.data)
    tr = get_dataset(args.dataset, "train", num_frames=args.num_frames, img_size=args.img_size, **opts)
    va = get_dataset(args.dataset, "val", num_frames=args.num_frames, img_size=args.img_size, **opts)
    amp = {"auto": "auto", "on": True, "off": False}[args.amp]
    rows = []
    for label, reducer in arms:
        torch.manual_seed(args.seed)
        model = build_model(args.model, tr.num_classes, num_frames=args.num_frames, img_size=args.img_size,
                            length_embedding=bool(reducer.length_embedding))
        load_before = load_average()
        recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                             label_smoothing=args.label_smoothing, seed=args.seed, amp=amp)
        res = train(model, tr, va, reducer, recipe)
        rows.append({"arm": label, "load_before": load_before, "load_after": load_average(), **res.to_dict()})
    base = rows[0]
    lines = ["| arm | epochs | train wall-clock (s) | s/epoch | CPU s | clips/s | tokens/clip (train) | "
             "tokens/clip (eval) | top-1 (%) | speed-up (wall) | speed-up (CPU) | Δtop-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['epochs']} | {r['wall_s']:.1f} | {r['wall_s'] / r['epochs']:.1f} | "
                     f"{r['cpu_s']:.1f} | {r['clips_per_s']:.1f} | {r['tokens_mean']:.1f} | "
                     f"{r['eval_tokens_mean']:.1f} | {r['top1']:.2f} | {base['wall_s'] / r['wall_s']:.2f}× | "
                     f"{base['cpu_s'] / r['cpu_s']:.2f}× | {r['top1'] - base['top1']:+.2f} |")
    table = "\n".join(lines)
    print(table)
    print(f"\n{args.model}, {tr.num_frames}×{tr.img_size}², {len(tr)} train / {len(va)} val clips, "
          f"{torch.get_num_threads()} threads, amp={rows[0]['amp']}, load average before each arm: "
          + ", ".join(f"{r['load_before']:.2f}" if r["load_before"] is not None else "?" for r in rows))
    if args.out:
        command = " ".join([prog, *map(shlex.quote, args_typed)])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": command, "fingerprint": fingerprint(rows[0]["device"]),
                                              "rows": rows, "table": table}, indent=2, default=str) + "\n")
    return 0
