"""ernievil2.runtime: MKL's AVX2 path is requested on AMD CPUs only, and never over the user's choice."""
import os
import subprocess
import sys

from conftest import REPO
from ernievil2.runtime import MKL_CPU_TYPE_VAR, mkl_cpu_type_for, tune_math_libraries

AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2 avx512f\n\nprocessor\t: 1\n"
INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx fma avx2 avx512f\n"
OLD_AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx\n"


def test_only_amd_cpus_with_avx2_get_the_override():
    assert mkl_cpu_type_for(AMD) == "5"
    assert mkl_cpu_type_for(INTEL) is None  # MKL already picks Intel's best kernels
    assert mkl_cpu_type_for(OLD_AMD) is None  # forcing AVX2 there would crash
    assert mkl_cpu_type_for("") is None


def test_the_users_setting_wins_and_a_missing_cpuinfo_changes_nothing(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AMD)
    env = {}
    assert tune_math_libraries(env, str(cpuinfo)) == "5" and env == {MKL_CPU_TYPE_VAR: "5"}
    env = {MKL_CPU_TYPE_VAR: "0"}
    assert tune_math_libraries(env, str(cpuinfo)) is None and env == {MKL_CPU_TYPE_VAR: "0"}
    env = {}
    assert tune_math_libraries(env, str(tmp_path / "absent")) is None and env == {}


def test_importing_the_package_applies_it_before_paddle_starts():
    code = ("import os, ernievil2; from ernievil2.runtime import mkl_cpu_type_for;"
            "text = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else '';"
            "print(os.environ.get('MKL_DEBUG_CPU_TYPE'), mkl_cpu_type_for(text))")
    env = {k: v for k, v in os.environ.items() if k != MKL_CPU_TYPE_VAR}
    env["PYTHONPATH"] = os.path.join(REPO, "packages")
    got, expected = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout.split()
    assert got == expected  # "5" on this kind of machine, "None" elsewhere
