"""Hardware fingerprint: what it records, and an id that separates incomparable timings."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch

from tokenbench.harness import fingerprint as fpmod
from tokenbench.harness.fingerprint import comparable, cpu_model, fingerprint, git_commit, slug

REPO = Path(fpmod.__file__).resolve().parent.parent


def test_fields_and_id():
    fp = fingerprint("cpu", torch.float32, threads=2)
    for key in ("id", "device", "device_name", "cpu_model", "cpu_isa", "threads", "torch", "cuda", "driver", "python",
                "dtype", "git_commit", "pyav"):
        assert key in fp
    assert fp["device"] == "cpu" and fp["threads"] == 2 and fp["dtype"] == "float32" and fp["cuda"] is None
    assert fp["torch"] == torch.__version__.split("+")[0]
    assert re.fullmatch(r"cpu-[a-z0-9.-]+-2t-torch\d+\.\d+\.\d+-float32", fp["id"]), fp["id"]
    assert f"-{fp['cpu_isa']}-2t-" in fp["id"]
    assert fp["id"] == fingerprint("cpu", "float32", threads=2)["id"], "stable"
    import av

    assert fp["pyav"] == av.__version__


def test_threads_dtype_and_torch_separate_ids():
    a = fingerprint("cpu", torch.float32, threads=1)
    assert a["id"] != fingerprint("cpu", torch.float32, threads=2)["id"]
    assert a["id"] != fingerprint("cpu", torch.bfloat16, threads=1)["id"]
    assert comparable(a, fingerprint("cpu", "float32", threads=1, attn_backend="sdpa"))
    assert not comparable(a, dict(a, id=a["id"].replace("torch", "torch9")))


def test_threads_default_to_torch_setting():
    assert fingerprint()["threads"] == torch.get_num_threads()


def test_cpu_model_from_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = re.findall(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    if names:
        assert cpu_model() == names[0].strip()
    assert slug(cpu_model()) in fingerprint()["id"]


def test_cpu_isa_is_what_torch_dispatches_to():
    # two CPUs with one model name (a VM's bare "AMD EPYC") but different vector units get different ids
    isa = fpmod.cpu_isa()
    assert isa.startswith(slug(torch.backends.cpu.get_cpu_capability()))
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), flags=re.M) if Path(
        "/proc/cpuinfo").exists() else None
    assert isa.endswith("-amx") == bool(flags and "amx_tile" in flags.group(1).split())


def test_git_commit_of_the_source_checkout(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert git_commit() == head.stdout.strip()
    assert git_commit(tmp_path) == "unknown"


def test_slug():
    assert slug("Intel(R) Xeon(R) Processor @ 2.10GHz") == "intel-xeon-processor-2.10ghz"
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("") == "unknown"
