"""``tokenbench run``: run a suite, record every cell, write the report, print the headline table."""
from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..paths import safe_name
from ..report import Records, headline_table, read, write_report
from ..report.provenance import AA_TOLERANCE, aa_failures, aa_text
from ..report.records import dedupe
from ..run import run_suite
from ..run.executors import DEFAULT_TIMEOUT_MIN, LaunchOptions
from ..run.launch import LAUNCHERS, launch
from ..run.plan import CodeVersion
from ..suite import describe, load_suite
from ..suite.overrides import parse_value
from ..suite.source import builtin_suite_descriptions, builtin_suites
from .common import require_folder

DESCRIPTION = """\
Run a benchmark suite: every model × dataset × reducer (× parameter sweep) × batch size × mode cell,
one at a time. Each finished cell is appended to OUT/<suite>/<hardware fingerprint>/records.jsonl the
moment it ends (flushed and fsynced), so an interrupted run loses at most the cell in flight and a
second run skips every recorded cell. A second run started on an --out that another run is timing
into says so and waits for it to end (two runs timing at once on one machine would measure each other),
then measures what is left (inprocess and local; Slurm's cells run elsewhere). A failing cell (a corrupt
video, out of memory, NaN) is recorded as failed with its error and the run goes on; a cell past
--timeout-min is recorded as timeout and run again by the next run. At the end the report is rebuilt
(REPORT_DIR/<suite>/) and the headline table printed.

The suite file is validated before any work: a typo, an unknown reducer or a parameter that cannot
work on the model is refused with the file and line at fault."""

EPILOG = """\
built-in suites (each file's [suite] description):
{suites}

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
  tokenbench run --add-reducer 'my_reducer:sweep.keep=0.9,0.75,0.5,0.3'   a plugin beside the built-ins
  tokenbench run --suite full --add-reducer 'compose:stages=["temporal","tome"] sweep.stages.tome.params.r=2,4'
  tokenbench run --dry-run                                          list the cells, run nothing
  tokenbench run --launcher local                  one process per cell (submitit), one at a time
  tokenbench run --suite paper-k400 --launcher slurm --partition gpu --array-parallelism 16 --timeout-min 120
                                                   one Slurm job per cell, 1 GPU each, a job array
"""


def _suite_listing() -> str:
    width = 100 - 15  # the epilog's other lines are about 100 wide
    lines = []
    for name, desc in builtin_suite_descriptions().items():
        wrapped = textwrap.wrap(desc, width) or [""]
        lines += [f"  {name:<12} {wrapped[0]}"] + [" " * 15 + w for w in wrapped[1:]]
    return "\n".join(lines)


def add_cli(sub) -> None:
    p = sub.add_parser("run", help="run a benchmark suite (default: the built-in 'default' suite)",
                       description=DESCRIPTION, epilog=EPILOG.format(suites=_suite_listing()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="default", metavar="NAME|PATH",
                   help=f"a built-in suite name ({', '.join(builtin_suites())}) or a suite .toml file "
                        "(default: %(default)s)")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="results root; records go to DIR/<suite>/<fingerprint>/records.jsonl (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite setting, e.g. defaults.repeats=3, train.epochs=1, "
                        "models.vit_b.checkpoint=PATH, datasets.k400.manifest=PATH (repeatable; VALUE is "
                        "read as TOML, else as a string)")
    p.add_argument("--add-reducer", dest="add_reducers", action="append", default=[], metavar="SPEC",
                   help="add a [[reducers]] entry to the suite, validated like the file's: 'NAME' or "
                        "'NAME:KEY=VALUE …' (space-separated; quote it). KEY=VALUE sets a parameter, "
                        "sweep.KEY=V1,V2,… sweeps one (a dotted KEY reaches into a nested parameter: "
                        "sweep.stages.tome.params.r=2,4), label=/id=/modes=/datasets=/models=/attn_path= set "
                        "the entry's keys. E.g. --add-reducer 'my_reducer:sweep.keep=0.9,0.75,0.5,0.3' "
                        "(repeatable; a plugin joins the built-ins' tables and figures)")
    p.add_argument("--only", action="append", default=[], metavar="FIELD=VALUE",
                   help="run only cells whose FIELD (model, dataset, reducer, mode, batch_size, label, or a "
                        "model/dataset id) equals VALUE, or one of VALUE's comma-separated alternatives "
                        "(reducer=none,tome; repeatable: all must match)")
    p.add_argument("--no-report", action="store_true", help="do not rebuild the report at the end")
    p.add_argument("--report-dir", default="reports", metavar="DIR",
                   help="report root; the suite's report goes to DIR/<suite>/ (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the cells recorded as failed (the new record supersedes the old)")
    p.add_argument("--rerun-stale", action="store_true",
                   help="measure again the recorded cells measured at another git commit or in a tree with "
                        "uncommitted changes (the new record supersedes the old; every launcher)")
    p.add_argument("--rerun-noisy", action="store_true",
                   help="time again the recorded cells whose timing ran under interference (a busy run queue, CPU "
                        "steal or a wide spread of the paired ratios: the interference column of the report's "
                        "details table; the new record supersedes the old; in-process launcher)")
    p.add_argument("--dry-run", action="store_true", help="validate the suite and list its cells; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_launch_args(p)
    p.set_defaults(func=run)


def add_launch_args(p: argparse.ArgumentParser) -> None:
    """``tokenbench run``'s launcher flags."""
    g = p.add_argument_group("launching jobs (submitit)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="inprocess",
                   help="inprocess: every cell in this process (default); local: one process per cell on this "
                        "machine, one at a time (one per GPU with several GPUs); slurm: one Slurm job per cell, "
                        "submitted as a job array")
    g.add_argument("--partition", metavar="P", help="Slurm partition (--launcher slurm)")
    g.add_argument("--gpus-per-job", type=int, metavar="N",
                   help="GPUs per job (default: 1 on slurm; local: 1 for CUDA cells, 0 for CPU cells)")
    g.add_argument("--array-parallelism", type=int, metavar="N",
                   help="jobs running at once (slurm: the array's %%N, default 256; local: default 1, at most "
                        "one per visible GPU, always 1 for CPU cells)")
    g.add_argument("--timeout-min", type=int, default=None, metavar="M",
                   help="time limit of each cell (inprocess, local) or job (slurm) in minutes; a cell stopped "
                        "by it is recorded as timeout and run again by the next run (default: none inprocess, "
                        f"{DEFAULT_TIMEOUT_MIN} for local and slurm jobs)")
    g.add_argument("--cpus-per-job", type=int, metavar="N", help="Slurm --cpus-per-task")
    g.add_argument("--mem-gb", type=float, metavar="G", help="Slurm memory per job")
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting of submitit's SlurmExecutor, e.g. account=proj, qos=high, "
                        "constraint=h100, exclude=node12 (repeatable)")
    g.add_argument("--submitit-dir", metavar="DIR",
                   help="submitit's job folder: logs and pickles (default: OUT/_submitit/<suite>); on a "
                        "cluster it must be on a filesystem the compute nodes share")
    g.add_argument("--wait", action="store_true", help="slurm: wait for every job to end, then report")


def options_from_args(args) -> LaunchOptions:
    extra: dict[str, Any] = {}
    for item in args.slurm_param:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise UserError(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. account=myproject")
        extra[k.strip()] = parse_value(v)
    for flag, v in (("--gpus-per-job", args.gpus_per_job), ("--array-parallelism", args.array_parallelism),
                    ("--timeout-min", args.timeout_min), ("--cpus-per-job", args.cpus_per_job)):
        if v is not None and v < (0 if flag == "--gpus-per-job" else 1):
            raise UserError(f"{flag} must be ≥ {0 if flag == '--gpus-per-job' else 1}, got {v}")
    if args.launcher == "slurm" and not args.partition and "partition" not in extra:
        print("note: no --partition given; Slurm uses its default partition", file=sys.stderr)
    return LaunchOptions(launcher=args.launcher, folder=Path(args.submitit_dir) if args.submitit_dir else None,
                         partition=args.partition, gpus_per_job=args.gpus_per_job,
                         array_parallelism=args.array_parallelism,
                         timeout_min=DEFAULT_TIMEOUT_MIN if args.timeout_min is None else args.timeout_min,
                         cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, slurm_params=extra, wait=args.wait,
                         retry_failed=args.retry_failed, rerun_stale=CodeVersion.here() if args.rerun_stale else None)


def auto_device_for(args) -> str | None:
    """What ``device = "auto"`` stands for where the cells run: cuda when Slurm jobs get GPUs (this login node
    may have none; its compute nodes do); None: this machine decides."""
    gpus = 1 if args.gpus_per_job is None else args.gpus_per_job
    return "cuda" if args.launcher == "slurm" and gpus > 0 else None


def run(args) -> int:
    """``tokenbench run``, whichever launcher: validate, list (--dry-run) or run, summarise, report."""
    require_folder("--out", args.out)
    if not args.no_report:
        require_folder("--report-dir", args.report_dir)
    opts = None if args.launcher == "inprocess" else options_from_args(args)
    if args.rerun_noisy and opts is not None:
        raise UserError("--rerun-noisy re-times cells in this process: use it with --launcher inprocess")
    if args.timeout_min is not None and args.timeout_min < 1:
        raise UserError(f"--timeout-min must be ≥ 1, got {args.timeout_min}")
    suite = load_suite(args.suite, overrides=args.overrides, only=args.only,
                       check_device=args.launcher != "slurm",  # Slurm's cells run on its compute nodes
                       add_reducers=args.add_reducers, auto_device=auto_device_for(args))
    cells = suite.cells()
    print(describe(suite), file=sys.stderr)
    if args.dry_run:
        for i, c in enumerate(cells, 1):
            where = c.where
            print(f"{i:4d}  {c.key}  {c.mode:<9} {c.device:<6} {where:<24} b{c.batch_size:<3} "
                  f"{c.label}")
        return 0
    if opts is None:
        summary = run_suite(suite, args.out, command=command_line(), retry_failed=args.retry_failed, cells=cells,
                            show_progress=not args.no_progress, rerun_stale=args.rerun_stale,
                            rerun_noisy=args.rerun_noisy, timeout_min=args.timeout_min)
    else:
        summary = launch(suite, args.out, opts, cells=cells, command=command_line())
    if summary.failures:
        print("failed cells:\n  " + "\n  ".join(summary.failures), file=sys.stderr)
    suite_dir = Path(args.out) / safe_name(suite.name)
    if opts is not None and opts.launcher == "slurm" and not opts.wait:
        if summary.job_ids:
            print(f"{suite.name}: {summary.submitted} jobs submitted ({summary.skipped} cells already recorded); "
                  f"records go to {suite_dir}/<fingerprint>/records.jsonl; when they end: "
                  f"tokenbench report {shlex.quote(str(suite_dir))}", file=sys.stderr)
        return 0
    where = f" → {summary.store}" if summary.store else ""
    timed = summary.timed_out
    failed = f"{summary.failed} failed" + (f", {timed} of them timed out" if timed else "")
    print(f"{suite.name}: {summary.ran} cells run ({failed}), {summary.skipped} already recorded, "
          f"{summary.wall_s:.1f} s{where}", file=sys.stderr)
    stale = summary.stale
    if stale:
        print(f"{suite.name}: {stale} recorded cell(s) were measured at another commit or in a dirty tree"
              + (" and were measured again" if summary.rerun_stale else
                 "; their records are kept (tokenbench run --rerun-stale measures them again)"), file=sys.stderr)
    if suite_dir.is_dir():
        records = read(suite_dir)  # once: the report, the headline table and the warnings share them
        if not args.no_report:
            report_and_headline(records, Path(args.report_dir))
        fingerprint = Path(summary.store).parent.name if summary.store else None
        warn_aa(records, {c.key for c in cells}, fingerprint)
        warn_noisy(records, {c.key for c in cells}, fingerprint)
    return 1 if summary.failed else 0


def warn_noisy(records: Records, keys: set[str], fingerprint: str | None = None) -> None:
    """One line when cells of this run (``keys``, on ``fingerprint`` when known) were timed under interference
    (``harness.timing.Interference``): which rules fired, and how to time them again."""
    ok, _ = dedupe(records.records)
    bad = [r for r in ok if r.key in keys and r.text("interference")
           and (fingerprint is None or r.fingerprint == fingerprint)]
    if bad:
        rules = sorted({rule for r in bad for rule in str(r.text("interference")).split("+")})
        print(f"warning: {len(bad)} cell(s) were timed under interference ({', '.join(rules)}; e.g. "
              f"{bad[0].label} b{bad[0].batch_size}): their speedups are marked † in the report; "
              f"tokenbench run --rerun-noisy times them again", file=sys.stderr)


def warn_aa(records: Records, keys: set[str], fingerprint: str | None = None) -> None:
    """One line when a cell's A/A control (the baseline timed against itself) reads off 1 by more than
    the tolerance: the speedups measured beside it are not to be trusted. Only this run's cells (``keys``)
    on this run's hardware (``fingerprint``, when known) count."""
    ok, _ = dedupe(records.records)
    bad = aa_failures([r for r in ok if r.key in keys
                       and (fingerprint is None or r.fingerprint == fingerprint)])
    if bad:
        print(f"warning: the A/A control is off 1 by more than {AA_TOLERANCE:.0%} in {len(bad)} cell(s) "
              f"(timing noise: a busy machine?), e.g. {aa_text(bad[0])}", file=sys.stderr)


def report_and_headline(records: Records, report_dir: Path) -> None:
    """Rebuild the suite's report and print its headline table, both from the records given."""
    paths = write_report(records, report_dir)
    for readme in paths.readmes:
        print(f"report: {readme}", file=sys.stderr)
    print(headline_table(records))


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, recorded with every record."""
    args = sys.argv[1:] if argv is None else argv
    return "tokenbench " + " ".join(shlex.quote(a) for a in args)
