"""``tokenbench run``: run a suite, record every cell, write the report, print the headline table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Run a benchmark suite: every model × dataset × reducer (× parameter sweep) × batch size × mode cell,
one at a time. Each finished cell is appended to OUT/<suite>/<hardware fingerprint>/records.jsonl the
moment it ends (flushed and fsynced), so an interrupted run loses at most the cell in flight and a
second run skips every recorded cell. A failing cell (a corrupt video, out of memory, NaN) is recorded
as failed with its error and the run goes on. At the end the report is rebuilt (REPORT_DIR/<suite>/)
and the headline table printed.

The suite file is validated before any work: a typo, an unknown reducer or a parameter that cannot
work on the model is refused with the file and line at fault."""

EPILOG = """\
built-in suites:
  default      CPU-sized comparison: the synthetic labelled benchmark and the bundled real clips, a
               small ViT it trains itself (cached), every reducer, and a short training comparison
  paper-k400   the RLT paper's Kinetics-400 setting: ViT-B/L, 16×224², stride 4, 5 clips × 3 crops
  paper-ssv2   the RLT paper's Something-Something v2 setting: ViT-B/L, 16 segments, 2 clips × 3 crops

paths for the paper suites (environment variables, or --set):
  TOKENBENCH_K400_MANIFEST   'path label' list of the Kinetics-400 validation videos
  TOKENBENCH_K400_ROOT       folder the manifest's relative paths start from (optional)
  TOKENBENCH_K400_VIT_B, TOKENBENCH_K400_VIT_L    VideoMAE(-2) checkpoints fine-tuned on Kinetics-400
  TOKENBENCH_SSV2_MANIFEST, TOKENBENCH_SSV2_ROOT, TOKENBENCH_SSV2_VIT_B, TOKENBENCH_SSV2_VIT_L

examples:
  tokenbench run                                   the default suite; results/ and reports/
  tokenbench run --suite my_suite.toml --out results/
  tokenbench run --suite paper-k400 --set datasets.k400.manifest=/data/k400/val.txt \\
      --set models.vit_b.checkpoint=/ckpt/vit_b_k400.pth --set models.vit_l.checkpoint=/ckpt/vit_l_k400.pth
  tokenbench run --set defaults.repeats=3 --set train.epochs=1      quicker, noisier
  tokenbench run --only reducer=rlt --only dataset=samples            a subset of the cells
  tokenbench run --dry-run                                          list the cells, run nothing
  tokenbench run --launcher local                  one process per cell (submitit), one at a time
  tokenbench run --suite paper-k400 --launcher slurm --partition gpu --array-parallelism 16 --timeout-min 120
                                                   one Slurm job per cell, 1 GPU each, a job array
"""


def add_cli(sub) -> None:
    p = sub.add_parser("run", help="run a benchmark suite (default: the built-in 'default' suite)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="default", metavar="NAME|PATH",
                   help="a built-in suite name (default, paper-k400, paper-ssv2) or a suite .toml file "
                        "(default: %(default)s)")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="results root; records go to DIR/<suite>/<fingerprint>/records.jsonl (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite setting, e.g. defaults.repeats=3, train.epochs=1, "
                        "models.vit_b.checkpoint=PATH, datasets.k400.manifest=PATH (repeatable; VALUE is "
                        "read as TOML, else as a string)")
    p.add_argument("--only", action="append", default=[], metavar="FIELD=VALUE",
                   help="run only cells whose FIELD (model, dataset, reducer, mode, batch_size, label, or a "
                        "model/dataset id) equals VALUE (repeatable; all must match)")
    p.add_argument("--no-report", action="store_true", help="do not rebuild the report at the end")
    p.add_argument("--report-dir", default="reports", metavar="DIR",
                   help="report root; the suite's report goes to DIR/<suite>/ (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the cells recorded as failed (the new record supersedes the old)")
    p.add_argument("--dry-run", action="store_true", help="validate the suite and list its cells; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    from .launch import add_launch_args

    add_launch_args(p)  # --launcher local|slurm: one submitit job per cell (harness/launch.py)
    p.set_defaults(func=run)


def run(args) -> int:
    from .runner import command_line, run_suite
    from .suite import cell_label, describe, load_suite

    if getattr(args, "launcher", "inprocess") != "inprocess":
        from .launch import run_launched

        return run_launched(args)
    suite = load_suite(args.suite, overrides=args.overrides, only=args.only)
    cells = suite.cells()
    print(describe(suite), file=sys.stderr)
    if args.dry_run:
        for i, c in enumerate(cells, 1):
            where = f"{c.get('model_id', c['model'])}/{c.get('dataset_id', c['dataset'])}"
            print(f"{i:4d}  {c['key']}  {c['mode']:<9} {where:<24} b{c['batch_size']:<3} {cell_label(c)}")
        return 0
    summary = run_suite(suite, args.out, command=command_line(), retry_failed=args.retry_failed, cells=cells,
                        show_progress=not args.no_progress)
    print(f"{suite.name}: {summary.ran} cells run ({summary.failed} failed), {summary.skipped} already recorded, "
          f"{summary.wall_s:.1f} s → {summary.store}", file=sys.stderr)
    suite_dir = Path(args.out) / summary.store.parent.parent.name
    if not args.no_report:
        report_and_headline(suite_dir, Path(args.report_dir))
    return 1 if summary.failed else 0


def report_and_headline(suite_dir: Path, report_dir: Path) -> None:
    """Rebuild the suite's report and print its headline table (a note when the report module is absent)."""
    from .results import load

    try:
        from .report import headline_table, write_report
    except ImportError as exc:
        print(f"note: no report written (tokenbench.harness.report is not available: {exc})", file=sys.stderr)
        return
    paths = write_report(suite_dir, report_dir)
    for readme in paths.readmes:
        print(f"report: {readme}", file=sys.stderr)
    print(headline_table(load(suite_dir)))
