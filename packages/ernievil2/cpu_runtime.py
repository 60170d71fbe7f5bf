"""Process-wide CPU settings that must be in place before Paddle's math libraries do their first call.

Paddle's x86 wheels do matrix products with the bundled Intel MKL (mklml, 2019).  On AMD processors that MKL
picks a generic code path: measured on a 2-core AMD EPYC (Zen 4), `paddle.matmul` runs at 36 GFLOPS on
2048^2 matrices against 92 GFLOPS with the AVX2 path, and one demo training step takes 0.95 s instead of
0.74 s.  This MKL generation honours ``MKL_DEBUG_CPU_TYPE=5`` (use the AVX2 kernels), read at its first call,
so importing `ernievil2` sets it when the CPU is an AMD one with AVX2 and the variable is not already set.
Newer MKL releases ignore the variable; Intel CPUs are left alone (MKL already picks their best path); a value
set by the user always wins (``MKL_DEBUG_CPU_TYPE=0`` or any other value turns this off).
"""
import os

MKL_CPU_TYPE_VAR = "MKL_DEBUG_CPU_TYPE"
MKL_AVX2 = "5"


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


def mkl_cpu_type_for(cpuinfo_text):
    """The MKL_DEBUG_CPU_TYPE value this CPU should get, or None to leave MKL's own choice."""
    vendor, flags = _cpu_facts(cpuinfo_text)
    if vendor == "AuthenticAMD" and {"avx2", "fma"} <= flags:
        return MKL_AVX2
    return None


def cpu_has_bf16(cpuinfo_path="/proc/cpuinfo"):
    """True when the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16), which oneDNN's bf16 kernels
    need to be faster than fp32 rather than emulated."""
    _, flags = _cpu_facts(_read_cpuinfo(cpuinfo_path) or "")
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def tune_math_libraries(environ=None, cpuinfo_path="/proc/cpuinfo"):
    """Set MKL_DEBUG_CPU_TYPE for AMD CPUs with AVX2 unless the user set it; returns the value set, or None."""
    environ = os.environ if environ is None else environ
    if MKL_CPU_TYPE_VAR in environ:
        return None
    text = _read_cpuinfo(cpuinfo_path)
    value = None if text is None else mkl_cpu_type_for(text)  # nothing known: nothing changed
    if value is not None:
        environ[MKL_CPU_TYPE_VAR] = value
    return value
