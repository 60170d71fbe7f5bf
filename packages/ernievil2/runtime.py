"""The machine: CPU facts (vendor, instruction sets), process-wide math-library settings, device choice and
CPU threads.  Paddle is imported only inside the functions that need it.

Paddle's x86 wheels multiply matrices with a bundled Intel MKL (2019) that takes a generic code path on AMD
CPUs unless ``MKL_DEBUG_CPU_TYPE=5`` asks for its AVX2 kernels; MKL reads the variable at its first call, so
importing `ernievil2` sets it on AMD CPUs with AVX2 when the user has not (any value the user sets wins).
"""
import logging
import os
import sys

from .errors import ConfigError

logger = logging.getLogger(__name__)

MKL_CPU_TYPE_VAR = "MKL_DEBUG_CPU_TYPE"
MKL_AVX2 = "5"
CPUINFO = "/proc/cpuinfo"


def _read_cpuinfo(path):
    """The text of /proc/cpuinfo, or None where there is none (not Linux, no /proc)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpu_facts(cpuinfo_text):
    """(vendor id, set of flags) of the first processor listed in /proc/cpuinfo text."""
    vendor, flags = "", set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if vendor and flags:
            break
    return vendor, flags


def cpu_flags(cpuinfo_path=CPUINFO):
    """The instruction-set flags of this CPU (empty where unknown)."""
    return _cpu_facts(_read_cpuinfo(cpuinfo_path) or "")[1]


def mkl_cpu_type_for(cpuinfo_text):
    """The MKL_DEBUG_CPU_TYPE value this CPU should get, or None to leave MKL's own choice."""
    vendor, flags = _cpu_facts(cpuinfo_text)
    if vendor == "AuthenticAMD" and {"avx2", "fma"} <= flags:
        return MKL_AVX2
    return None


def cpu_has_bf16(cpuinfo_path=CPUINFO):
    """True when the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16), which oneDNN's bf16 kernels
    need to be faster than fp32 rather than emulated."""
    return bool(cpu_flags(cpuinfo_path) & {"avx512_bf16", "amx_bf16"})


def cpu_has_int8(cpuinfo_path=CPUINFO):
    """True when the CPU has int8 dot-product instructions (AMX-INT8 or AVX512-VNNI) that make int8 linear layers
    faster than bf16 or fp32 ones."""
    return bool(cpu_flags(cpuinfo_path) & {"amx_int8", "avx512_vnni"})


def tune_math_libraries(environ=None, cpuinfo_path=CPUINFO):
    """Set MKL_DEBUG_CPU_TYPE for AMD CPUs with AVX2 unless the user set it; returns the value set, or None."""
    environ = os.environ if environ is None else environ
    if MKL_CPU_TYPE_VAR in environ:
        return None
    text = _read_cpuinfo(cpuinfo_path)
    value = None if text is None else mkl_cpu_type_for(text)  # nothing known: nothing changed
    if value is not None:
        environ[MKL_CPU_TYPE_VAR] = value
    return value


# The largest image decoded by default: PIL's decompression-bomb limit (1024 * 1024 * 1024 // 4 // 3, about
# 89.5 MP).  `data.images` checks each image's header against the configured limit before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
OPENCV_PIXEL_LIMIT_VAR = "OPENCV_IO_MAX_IMAGE_PIXELS"


def limit_image_decoders(environ=None):
    """Give OpenCV's decoders a pixel limit of their own (unless the user set one): the second line of defence
    for files whose header and decoder disagree.  OpenCV reads it once, when cv2 is imported, so this runs in
    the package's `__init__`, before any module can import cv2.  Returns the value in force."""
    environ = os.environ if environ is None else environ
    return environ.setdefault(OPENCV_PIXEL_LIMIT_VAR, str(DEFAULT_MAX_IMAGE_PIXELS))


def gpu_count():
    """Visible GPUs of this Paddle build (0 for a CPU build or a broken CUDA setup)."""
    try:
        import paddle
        return paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup counts as no GPU; the caller reports the device
        return 0


def resolve_device(requested="auto", gpu_index=None, warn=True):
    """Select and return the device a run uses: "gpu" or "cpu".

    requested: "auto" (a GPU when there is one), "gpu" (falls back to the CPU with one warning when this Paddle
    build or machine has none) or "cpu".  gpu_index: which GPU (a distributed rank's own); default the first.
    """
    import paddle
    if requested not in ("auto", "gpu", "cpu"):
        raise ConfigError(f"'device' must be auto, gpu or cpu, got {requested!r}")
    if requested != "cpu" and gpu_count() > 0:
        paddle.set_device(f"gpu:{gpu_index or 0}")
        return "gpu"
    if requested == "gpu" and warn:
        why = "no GPU is visible" if paddle.is_compiled_with_cuda() else "this Paddle build has no CUDA support"
        logger.warning("%s; running on the CPU instead of the GPU", why)
    paddle.set_device("cpu")
    return "cpu"


def set_cpu_threads(n=0, local_ranks=1):
    """CPU math threads of this process: n, or (n == 0) the cores shared among this machine's local ranks."""
    from paddle.base import core
    n = n or max(1, (os.cpu_count() or 1) // max(1, local_ranks))
    core.set_num_threads(n)
    return n


def launched_world_size(environ=None):
    """Ranks paddle.distributed.launch started (PADDLE_TRAINERS_NUM; 1 without the launcher), known before
    Paddle loads."""
    environ = os.environ if environ is None else environ
    return max(1, int(environ.get("PADDLE_TRAINERS_NUM", "1")))


def launch_plan(cpu_processes, log_dir, gpu_count, per_gpu=True):
    """How a script starts a run when it gets no launcher options: ("single",) for one process, or
    ("launch", *options) for paddle.distributed.launch: one rank per visible GPU when there are several and
    per_gpu (run_infer.sh gets its GPUs from its DEVICE argument instead), else `cpu_processes` CPU ranks on
    the CPU; the launcher's per-rank logs go to log_dir instead of ./log."""
    logs = ("--log_dir", log_dir)
    if gpu_count > 0:
        return ("launch",) + logs if per_gpu and gpu_count > 1 else ("single",)
    if cpu_processes > 1:
        return ("launch", "--nproc_per_node", str(cpu_processes)) + logs
    return ("single",)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent():
    """Linux: have the kernel SIGKILL this process when its parent dies, so that killing a run's launcher (or a rank)
    also ends its ranks (or worker processes) instead of leaving them working on.  Called first thing in a child;
    a no-op where prctl is not available."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    parent = os.getppid()
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect: nobody would kill us later
        os.kill(os.getpid(), signal.SIGKILL)
