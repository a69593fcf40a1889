"""What this host can run, for ``--engine auto``: is SGLang installed, how many CUDA GPUs.

Both probes are cheap, never raise, and never initialise CUDA in this process (NVML and
nvidia-smi only read the driver's view), so the orchestrator stays GPU-free.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

NVIDIA_SMI_TIMEOUT_S = 10.0


def sglang_available() -> bool:
    """True if ``import sglang`` would find the package (it is not imported: that takes ~30 s
    and pulls in torch)."""
    try:
        return importlib.util.find_spec("sglang") is not None
    except (ImportError, ValueError):
        return False


def cuda_gpu_count() -> int:
    """GPUs the NVIDIA driver reports: via NVML (nvidia-ml-py) if importable, else ``nvidia-smi
    -L``, else 0. Ignores CUDA_VISIBLE_DEVICES: the placements file names physical GPU ids."""
    count = _nvml_count()
    return count if count is not None else _nvidia_smi_count()


def _nvml_count() -> int | None:
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):  # no driver or no library: ask nvidia-smi instead
        return None
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except (pynvml.NVMLError, OSError):
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except (pynvml.NVMLError, OSError):
            pass  # shutting down a half-initialised NVML cannot change the answer


def _nvidia_smi_count() -> int:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, check=True, timeout=NVIDIA_SMI_TIMEOUT_S
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
