"""The one dispatch plan every launcher follows: which cells are not recorded yet, and which self-trained
models they need first (trained once, before the cells fan out)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fingerprint import git_commit, git_dirty
from ..results import ResultStore, store_path
from ..schema import Cell
from ..shipped_weights import shipped_checkpoint
from .common import hardware_fingerprint, torch_threads
from .models import pretrained_path


@dataclass
class Plan:
    cells: list[Cell]                # every cell asked for
    pending: list[Cell]              # not recorded yet: to run
    prepare: list[dict[str, Any]]    # pretrain settings of the self-trained models not shipped or cached yet

    @property
    def skipped(self) -> int:
        return len(self.cells) - len(self.pending)


def make_plan(cells: list[Cell], done: set[str], cache_dir: Path) -> Plan:
    pending = [c for c in cells if c.key not in done]
    return Plan(cells, pending, pending_pretrains(pending, cache_dir))


@dataclass(frozen=True)
class CodeVersion:
    """The code a record was measured with: ``git_commit`` and ``git_dirty`` of its fingerprint."""

    commit: str
    dirty: bool | None

    @classmethod
    def here(cls) -> CodeVersion:
        return cls(git_commit(), git_dirty())

    def measured_elsewhere(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` was measured at another commit or in a tree with uncommitted changes: its
        numbers may not be what this code measures."""
        fp = record.get("fingerprint") or {}
        return fp.get("git_commit") != self.commit or bool(fp.get("git_dirty"))


def stale_keys(store: ResultStore, cells: list[Cell], code: CodeVersion) -> set[str]:
    """Keys of ``cells`` whose newest record was measured at another commit or in a dirty tree."""
    wanted = {c.key for c in cells}
    return {k for k, r in store.latest().items() if k in wanted and code.measured_elsewhere(r)}


def timed_noisy(record: dict[str, Any]) -> bool:
    """Whether ``record``'s timing ran under interference (``harness.timing.Interference``: a rule fired)."""
    return bool((record.get("metrics") or {}).get("interference"))


def noisy_keys(store: ResultStore, cells: list[Cell]) -> set[str]:
    """Keys of ``cells`` whose newest record was timed under interference (``--rerun-noisy``)."""
    wanted = {c.key for c in cells}
    return {k for k, r in store.latest().items() if k in wanted and timed_noisy(r)}


def pending_pretrains(cells: list[Cell], cache_dir: Path) -> list[dict[str, Any]]:
    """The distinct self-trained models ``cells`` need whose checkpoint is not cached yet."""
    seen, out = set(), []
    for c in cells:
        if c.pretrain and c.checkpoint.startswith("trained:") and c.checkpoint not in seen:
            seen.add(c.checkpoint)
            if not (shipped_checkpoint(c.pretrain) or pretrained_path(c.pretrain, cache_dir).is_file()):
                out.append(c.pretrain)
    return out


def local_store(out: str | Path, suite) -> tuple[str, ResultStore]:
    """(fingerprint id, store) this machine's records of ``suite`` go to, under the suite's defaults."""
    with torch_threads(suite.defaults.threads) as threads:
        fp = hardware_fingerprint(suite.device, suite.dtype, threads)
    return fp["id"], ResultStore(store_path(out, suite.name, fp["id"]))
