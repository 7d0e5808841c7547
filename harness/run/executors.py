"""The submitit executors, alone: Slurm job arrays and local processes, each set up for tokenbench cells.
submitit is an optional dependency (extra ``sweep``), imported only when an executor is made."""
from __future__ import annotations

import contextlib
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..paths import safe_name

if TYPE_CHECKING:
    from .plan import CodeVersion

DEFAULT_TIMEOUT_MIN = 240


@dataclass
class LaunchOptions:
    launcher: str = "local"
    folder: Path | None = None  # submitit's logs and pickles; default <out>/_submitit/<suite>
    partition: str | None = None
    gpus_per_job: int | None = None  # default: 1 on slurm; local: 1 for CUDA cells, else 0
    array_parallelism: int | None = None  # default: slurm 256 (submitit's), local 1
    timeout_min: int = DEFAULT_TIMEOUT_MIN
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    slurm_params: dict[str, Any] = field(default_factory=dict)  # more sbatch settings: account, qos, …
    wait: bool = False  # slurm: block until the array ends
    retry_failed: bool = False
    rerun_stale: CodeVersion | None = None  # measure again the records measured at another code version
    poll_s: float = 1.0


def warning_delay_s(timeout_min: float) -> int:
    """How long before the time limit Slurm should warn a job (submitit's ``signal_delay_s``): submitit's 90 s
    when the limit is long, less for short limits. slurmctld looks at time limits every 30 s and sends a
    warning already when it falls due before its next look; a warning due within 30 s of the start can come
    while Python is still starting, before any handler is installed, where SIGUSR2 kills the process."""
    return int(max(1, min(90, float(timeout_min) * 60 / 2 - 30)))


def default_folder(out: str | Path, suite: str) -> Path:
    return Path(out) / "_submitit" / safe_name(suite)


def slurm_executor(folder: str | Path, opts: LaunchOptions, job_name: str):
    """submitit's ``SlurmExecutor`` set up for tokenbench cells (needs ``srun`` on PATH)."""
    import submitit

    try:  # --slurm-param python=PATH: the interpreter the jobs run (default: this one)
        ex = submitit.SlurmExecutor(folder=str(Path(folder) / "%j"), python=opts.slurm_params.get("python"))
    except RuntimeError as exc:
        raise UserError(f"--launcher slurm: {exc} (run it on a Slurm login node)") from None
    gpus = 1 if opts.gpus_per_job is None else int(opts.gpus_per_job)
    params: dict[str, Any] = {"job_name": job_name, "time": int(opts.timeout_min), "ntasks_per_node": 1, "nodes": 1,
                              "signal_delay_s": warning_delay_s(opts.timeout_min)}
    if gpus:
        params["gpus_per_node"] = gpus
    if opts.partition:
        params["partition"] = opts.partition
    if opts.array_parallelism:
        params["array_parallelism"] = int(opts.array_parallelism)
    if opts.cpus_per_job:
        params["cpus_per_task"] = int(opts.cpus_per_job)
    if opts.mem_gb:
        params["mem"] = f"{int(round(opts.mem_gb * 1024))}MB"
    params.update({k: v for k, v in opts.slurm_params.items() if k != "python"})
    ex.update_parameters(**params)
    return ex


def local_executor(folder: str | Path, opts: LaunchOptions):
    import submitit

    ex = submitit.LocalExecutor(folder=str(Path(folder) / "%j"))
    ex.update_parameters(timeout_min=int(opts.timeout_min))
    return ex


def pin_gpu(ex, gpu: str | None) -> None:
    """The next local job sees only ``gpu`` (None: no GPU at all)."""
    if gpu is None:
        ex.update_parameters(gpus_per_node=0, visible_gpus=(), setup=[])
    elif gpu.isdigit():  # submitit's own mechanism: CUDA_VISIBLE_DEVICES=<gpu> for the job
        ex.update_parameters(gpus_per_node=1, visible_gpus=(int(gpu),), setup=[])
    else:  # a GPU UUID / MIG name: exported before the job starts
        ex.update_parameters(gpus_per_node=0, visible_gpus=(),
                             setup=[f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpu)}"])


def job_info(launcher: str) -> dict[str, Any]:
    info: dict[str, Any] = {"name": launcher, "hostname": socket.gethostname()}
    with contextlib.suppress(Exception):
        import submitit

        info["job_id"] = submitit.JobEnvironment().job_id
    return info


def job_error(exc: BaseException) -> str:
    """The error a submitit job died of: the last line of the job's own traceback when submitit's message
    carries one (between its ``-----`` rules), else the message's last line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines()]
    rules = [i for i, ln in enumerate(lines) if ln and set(ln) == {"-"}]
    body = lines[rules[0] + 1:rules[1]] if len(rules) >= 2 else lines
    body = [ln for ln in body if ln]
    return body[-1] if body else type(exc).__name__
