"""What stands behind a table: the code commits its records were measured at, and whether the estimator
passed its own A/A control on that hardware (docs/architecture.md §5: the baseline timed against itself reads 1.00)."""
from __future__ import annotations

from .records import Record

AA_TOLERANCE = 0.02  # an A/A speedup further than this from 1 means the timing protocol is not trustworthy


def commit_of(r: Record) -> str:
    """``abc123456789`` (12 hex digits) of a record's fingerprint, ``+dirty`` when the tree had changes."""
    commit = str(r.machine.get("git_commit") or "unknown")
    short = commit[:12] if commit != "unknown" else commit
    return short + ("+dirty" if r.machine.get("git_dirty") is True else "")


def commits(records: list[Record]) -> dict[str, int]:
    """The distinct commits behind ``records`` → how many records each measured."""
    counts: dict[str, int] = {}
    for r in records:
        c = commit_of(r)
        counts[c] = counts.get(c, 0) + 1
    return dict(sorted(counts.items()))


def commits_note(records: list[Record]) -> str:
    """The table note naming the code behind its rows."""
    c = commits(records)
    text = ", ".join(f"`{k}` ({n} record{'s' if n != 1 else ''})" for k, n in c.items())
    dirty = " (+dirty: the tree had uncommitted changes)" if any(k.endswith("+dirty") for k in c) else ""
    return f"code: measured at commit{'s' if len(c) > 1 else ''} {text}{dirty}."


def aa_controls(records: list[Record]) -> list[Record]:
    """Inference records of the baseline whose speedup is a measured A/A (the baseline timed against itself:
    it has an interval); records from before the A/A control carry a typed-in 1.00 and are not controls."""
    return [r for r in records if r.mode == "inference" and r.reducer == "none"
            and r.num("speedup") is not None and r.num("speedup_ci_lo") is not None]


def aa_failures(records: list[Record], tolerance: float = AA_TOLERANCE) -> list[Record]:
    """The A/A controls reading further than ``tolerance`` from 1."""
    return [r for r in aa_controls(records) if abs(r.num("speedup") - 1.0) > tolerance]


def aa_text(r: Record) -> str:
    lo, hi = r.num("speedup_ci_lo"), r.num("speedup_ci_hi")
    return (f"{r.model}/{r.dataset} b{r.batch_size} {r.label}: "
            f"{r.num('speedup'):.3f}× (95 % {lo:.3f}–{hi:.3f})")
