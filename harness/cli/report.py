"""``tokenbench report``: rebuild tables, figures and README from result records; ``--check`` for CI."""
from __future__ import annotations

import sys

from ..errors import UserError
from ..paths import UnsafePathError
from ..report import check_report, write_report
from ..results import NotResultsError
from .common import require_folder


def add_cli(sub) -> None:
    p = sub.add_parser(
        "report", help="rebuild tables, figures and README from result records",
        description="Rebuild the paper-style tables (Markdown, CSV, LaTeX), figures (PNG, SVG) and a "
                    "README for every suite in the records, under OUT/<suite>/. With --check, write "
                    "nothing and exit 1 if the committed tables/README under OUT are stale.")
    p.add_argument("results", nargs="*", default=["results"], metavar="RESULTS",
                   help="records.jsonl files or folders searched recursively (default: results)")
    p.add_argument("--out", default="reports", help="report root; each suite goes to OUT/<suite>/ "
                                                     "(default: reports)")
    p.add_argument("--check", action="store_true",
                   help="compare the committed report with one regenerated from the records; exit 1 "
                        "listing stale files")
    p.add_argument("--no-figures", action="store_true", help="write tables and README only")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.check:
        require_folder("--out", args.out)
    try:
        if args.check:
            stale = check_report(args.results, args.out)
            if stale:
                print(f"tokenbench report --check: {len(stale)} stale file(s) under {args.out}:", file=sys.stderr)
                for line in stale:
                    print(f"  {line}", file=sys.stderr)
                print(f"regenerate with: tokenbench report {' '.join(args.results)} --out {args.out}",
                      file=sys.stderr)
                return 1
            print(f"report under {args.out} is up to date with {' '.join(args.results)}")
            return 0
        paths = write_report(args.results, args.out, figures=not args.no_figures)
    except (FileNotFoundError, NotResultsError, UnsafePathError) as exc:
        raise UserError(str(exc)) from exc
    if not paths.readmes:
        raise UserError(f"no result records found in {' '.join(args.results)}")
    for readme in paths.readmes:
        print(f"wrote {readme.parent}/ ({readme.name}, "
              f"{sum(p.parent.parent == readme.parent for p in paths.tables)} table files, "
              f"{sum(p.parent.parent == readme.parent for p in paths.figures)} figure files)")
    for s in paths.skipped_figures:
        print(f"  skipped figure {s}")
    if paths.failed_cells:
        print(f"  {paths.failed_cells} failed cell(s) listed in the README")
    return 0
