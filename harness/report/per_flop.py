"""How much of each reducer's saved FLOPs became saved time: the summary ``.ci/gpu-run`` prints and writes.

One row per inference record: the FLOP ratio (the baseline's GFLOPs per clip over the reducer's, both of the
clips as timed, the baseline from the ``none`` cell of the same model, dataset and batch size), the paired
speedup and its 95 % interval, speedup ÷ FLOP ratio (1.0: every saved FLOP became saved time), the attention
path of each arm, peak memory per arm (CUDA) and the interference rules that fired. The ``none`` row is the
A/A control: its speedup should read 1 within its interval.

``python -m tokenbench.harness.report.per_flop RECORDS.jsonl …`` prints it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PerFlopRow:
    label: str
    batch_size: int
    attn_path: str  # reducer arm
    baseline_attn_path: str
    tokens_in: float | None
    flop_ratio: float | None  # baseline GFLOPs / reducer GFLOPs, clips as timed
    speedup: float | None
    speedup_ci: tuple[float, float] | None
    peak_mem_mb: float | None
    baseline_peak_mem_mb: float | None
    interference: str
    attn_backend: str

    @property
    def per_flop(self) -> float | None:
        """speedup ÷ FLOP ratio: the share of the saved FLOPs that became saved time (1.0: all of it)."""
        if self.speedup is None or not self.flop_ratio:
            return None
        return self.speedup / self.flop_ratio


def _group(rec: dict[str, Any]) -> tuple:
    c = rec["cell"]
    return (c.get("model"), c.get("num_frames"), c.get("img_size"), c.get("dataset"), c.get("batch_size"),
            c.get("autocast"), rec.get("fingerprint", {}).get("id"))


def per_flop_rows(records: list[dict[str, Any]]) -> list[PerFlopRow]:
    """The rows of the latest ok inference record of each cell, in the records' order."""
    latest: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("status") == "ok" and r.get("cell", {}).get("mode", "inference") == "inference":
            latest[r["key"]] = r
    base = {_group(r): r["metrics"].get("time_gflops") for r in latest.values() if r["cell"]["reducer"] == "none"}
    rows = []
    for r in latest.values():
        m, c = r["metrics"], r["cell"]
        b, g = base.get(_group(r)), m.get("time_gflops")
        lo, hi = m.get("speedup_ci_lo"), m.get("speedup_ci_hi")
        rows.append(PerFlopRow(
            label=c.get("label", c["reducer"]), batch_size=int(c["batch_size"]), attn_path=m.get("attn_path", ""),
            baseline_attn_path=m.get("baseline_attn_path", ""), tokens_in=m.get("time_tokens_in_mean"),
            flop_ratio=b / g if b and g else None, speedup=m.get("speedup"),
            speedup_ci=(lo, hi) if lo is not None and hi is not None else None,
            peak_mem_mb=m.get("peak_mem_mb"), baseline_peak_mem_mb=m.get("baseline_peak_mem_mb"),
            interference=m.get("interference", ""), attn_backend=r.get("fingerprint", {}).get("attn_backend", "")))
    return sorted(rows, key=lambda row: (row.batch_size, row.label))


def _f(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def per_flop_text(rows: list[PerFlopRow]) -> str:
    head = (f"{'reducer':<48} {'batch':>5} {'path (base/red)':<22} {'backend':<22} {'tokens':>7} {'FLOP×':>6} "
            f"{'speedup [95%]':>20} {'÷FLOP':>6} {'peak MB (base/red)':>19}  interference")
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"[{r.speedup_ci[0]:.2f}–{r.speedup_ci[1]:.2f}]" if r.speedup_ci else ""
        mem = f"{_f(r.baseline_peak_mem_mb, '.0f')}/{_f(r.peak_mem_mb, '.0f')}"
        lines.append(f"{r.label:<48.48} {r.batch_size:>5} {r.baseline_attn_path + '/' + r.attn_path:<22.22} "
                     f"{r.attn_backend:<22.22} {_f(r.tokens_in, '.0f'):>7} {_f(r.flop_ratio, '.2f'):>6} "
                     f"{_f(r.speedup, '.2f') + ' ' + ci:>20} {_f(r.per_flop, '.2f'):>6} {mem:>19}  "
                     f"{r.interference or '-'}")
    return "\n".join(lines)


def read_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        with open(p) as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m tokenbench.harness.report.per_flop RECORDS.jsonl …", file=sys.stderr)
        return 2
    print(per_flop_text(per_flop_rows(read_records(paths))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
