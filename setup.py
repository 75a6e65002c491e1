"""Build script for dpo_fast's compiled kernels.

Everything declarative lives in pyproject.toml; this file only does what needs code:
cythonising the kernels, choosing compiler flags per compiler, and detecting OpenMP with a
compile-and-link probe (the approach of astropy's extension-helpers and POT's
``add_openmp_flags_if_available``). Without OpenMP the build still succeeds and the kernels run
serially; ``DPO_FAST_NO_OPENMP=1`` forces that serial build. For testing only,
``DPO_FAST_SANITIZE=address,undefined`` builds with AddressSanitizer and UndefinedBehaviorSanitizer
(see SANITIZE_FLAGS; scripts/sanitize.sh builds so and runs the test suite under them).
"""

import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_DIR = os.path.join("src", "dpo_fast", "_kernels")
# -ffp-contract=off: GCC's default gnu C mode fuses a*b+c into FMA on targets that have it,
# which would make the AVX-512/AVX2 clones give other bits than the baseline one. No
# -ffast-math and no -march: wheels must run everywhere and the runtime dispatch picks the
# instruction set. -fno-math-errno / -fno-trapping-math change no value, only errno and FP
# exception flags, and let the vectoriser if-convert the selects in csrc/simd_math.h.
# (tests/test_vectorization.py reads this list to check the vectoriser's report.)
# -g0 overrides the -g in Python's own CFLAGS: no DWARF debug info in the shipped modules
# (about 4x smaller .so files; the symbol table stays for readable backtraces).
# -fvisibility=hidden: the modules export only their PyInit_* entry points.
GCC_FLAGS = ["-O3", "-g0", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
             "-fvisibility=hidden"]
# /fp:precise keeps IEEE semantics (no contraction into FMA in VS 2022+ defaults).
MSVC_FLAGS = ["/O2", "/fp:precise"]
# The SIMD levels of csrc/simd.h: each kernel source (KERNEL_SOURCES) is compiled once per level
# with -DDPO_ISA=<level> and the compiler's switch for it; the extra x86-64 levels only when
# building for x86-64 (tests/test_vectorization.py reads this table too).
SIMD_LEVEL_FLAGS = {
    "scalar": {"unix": [], "msvc": []},  # vectorisation off by simd.h's DPO_NOVEC_* hints
    "baseline": {"unix": [], "msvc": []},
    "avx2": {"unix": ["-mavx2"], "msvc": ["/arch:AVX2"]},
    "avx512": {"unix": ["-mavx512f", "-mavx512dq", "-mavx512vl"], "msvc": ["/arch:AVX512"]},
}
X86_LEVELS = ("avx2", "avx512")
# Extensions with kernels, and the csrc/ file compiled once per SIMD level for each.
KERNEL_SOURCES = {
    "dpo_fast._kernels._pairwise": "pairwise_simd.c",
    "dpo_fast._kernels._logps": "logps_simd.c",
}
CSRC_DIR = os.path.join(KERNEL_DIR, "csrc")
# DPO_FAST_SANITIZE=<checks> (GCC/Clang only; unset or empty: the normal build, unchanged):
# the comma list goes to -fsanitize=, e.g. address,undefined. These flags are appended after
# GCC_FLAGS (-g1 overrides -g0; -O3 stays, so the instrumented code is the optimised code) to
# the compile and link arguments of every extension and of the per-ISA clone objects. A UB
# report then aborts instead of printing and carrying on. -fno-wrapv undoes the -fwrapv of
# CPython's own CFLAGS, which makes signed overflow and shifts defined in GCC and so hides them
# from UBSan: the kernels must be plain ISO C (MSVC builds them too). The modules link the
# sanitizer runtimes dynamically, so the interpreter (not itself instrumented) must load them
# first: LD_PRELOAD="$(gcc -print-file-name=libasan.so)". scripts/sanitize.sh does all of it
# and runs the test suite. Like DPO_FAST_NO_OPENMP below, for development builds, never wheels.
# -g1 (line tables and functions, no variable locations) is all a report's symbolised stack
# needs, inlined frames included; full -g makes GCC track variables through the large chunk
# kernels, exceed its limit and compile them twice: 139 s against 67 s for one SIMD level.
SANITIZE_FLAGS = ["-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-fno-wrapv",
                  "-g1"]

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return (n > 0 && omp_get_max_threads() > 0) ? 0 : 1;
    }
    """
)


def _targets_x86_64():
    """Whether the extension is built for x86-64 (and only x86-64: a macOS universal2 build
    cannot take the -mavx2 clones)."""
    archflags = os.environ.get("ARCHFLAGS", "").split()
    if sys.platform == "darwin" and archflags:
        return archflags == ["-arch", "x86_64"]
    plat = sysconfig.get_platform().lower()
    return plat.endswith(("x86_64", "amd64")) and "universal" not in plat


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _sanitize_flags(compiler_type):
    """Compile-and-link flags for DPO_FAST_SANITIZE (empty list when it is unset)."""
    value = os.environ.get("DPO_FAST_SANITIZE", "")
    checks = [check.strip() for check in value.split(",") if check.strip()]
    if not checks:
        return []
    if compiler_type == "msvc":
        raise SystemExit("dpo_fast: DPO_FAST_SANITIZE needs GCC or Clang")
    flags = [f"-fsanitize={','.join(checks)}"] + SANITIZE_FLAGS
    print(f"dpo_fast: DPO_FAST_SANITIZE is set: building with {' '.join(flags)}")
    return flags


def _openmp_flag_candidates(compiler_type):
    """(compile flags, link flags) pairs worth trying, most likely first."""
    if compiler_type == "msvc":
        return [(["/openmp"], [])]
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag; libomp (Homebrew, or a prefix given in
        # DPO_FAST_LIBOMP_PREFIX) supplies the runtime.
        prefixes = [os.environ.get("DPO_FAST_LIBOMP_PREFIX", ""), "/opt/homebrew/opt/libomp",
                    "/usr/local/opt/libomp"]
        for prefix in filter(None, prefixes):
            candidates.append(
                (["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                 [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"])
            )
    return candidates


class BuildExt(build_ext):
    """build_ext that picks optimisation and OpenMP flags for the compiler in use."""

    def _probe_openmp(self):
        if _env_flag("DPO_FAST_NO_OPENMP"):
            print("dpo_fast: DPO_FAST_NO_OPENMP is set: building the serial kernels")
            return None
        tmpdir = tempfile.mkdtemp(prefix="dpo_fast_omp_")
        try:
            source = os.path.join(tmpdir, "probe.c")
            with open(source, "w") as fh:
                fh.write(OPENMP_PROBE)
            for compile_flags, link_flags in _openmp_flag_candidates(self.compiler.compiler_type):
                try:
                    objects = self.compiler.compile(
                        [source], output_dir=tmpdir, extra_postargs=compile_flags
                    )
                    self.compiler.link_executable(
                        objects, "probe", output_dir=tmpdir, extra_postargs=link_flags
                    )
                except Exception:  # noqa: BLE001 - any failure means "not this flag set"
                    continue
                print(f"dpo_fast: OpenMP found with {' '.join(compile_flags)}")
                return compile_flags, link_flags
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        print("dpo_fast: no working OpenMP: building the serial kernels")
        return None

    def _jobs(self):
        """Parallel compile jobs: -j N (--parallel) if given, else every CPU (the default,
        also under pip, which passes no -j)."""
        if isinstance(self.parallel, int) and not isinstance(self.parallel, bool) \
                and self.parallel > 0:
            return self.parallel
        return os.cpu_count() or 1

    def build_extensions(self):
        compiler_type = self.compiler.compiler_type
        openmp = self._probe_openmp()
        base_compile = list(MSVC_FLAGS if compiler_type == "msvc" else GCC_FLAGS)
        if compiler_type != "msvc" and _env_flag("DPO_FAST_VEC_REPORT"):
            base_compile.append("-fopt-info-vec-optimized")
        sanitize = _sanitize_flags(compiler_type)
        base_compile += sanitize  # the kernel objects below get base_compile too
        x86 = _targets_x86_64()
        levels = [level for level in SIMD_LEVEL_FLAGS if x86 or level not in X86_LEVELS]
        for ext in self.extensions:
            ext.extra_compile_args = base_compile + list(ext.extra_compile_args)
            if sanitize:
                ext.extra_link_args = list(ext.extra_link_args) + sanitize
            if openmp is not None:
                ext.extra_compile_args += openmp[0]
                ext.extra_link_args = list(ext.extra_link_args) + openmp[1]
            if ext.name in KERNEL_SOURCES and x86:
                ext.define_macros = list(ext.define_macros) + [("DPO_X86_CLONES", "1")]
        self.check_extensions_list(self.extensions)
        # One pool for everything, the kernel objects first (the longest compiles) and the
        # extensions that wait for them last, with a line per compile: a 2-core machine
        # builds in about 45 s (README), and `pip install -v .` shows the progress.
        jobs = [(ext, level) for ext in self.extensions if ext.name in KERNEL_SOURCES
                for level in levels]
        total = len(jobs) + len(self.extensions)
        counter = iter(range(1, total + 1))
        lock = threading.Lock()

        def progress(what):
            with lock:
                print(f"dpo_fast: [{next(counter)}/{total}] {what}", flush=True)

        with ThreadPoolExecutor(max_workers=self._jobs()) as pool:
            objects = {ext.name: [] for ext in self.extensions}
            for ext, level in jobs:
                objects[ext.name].append(pool.submit(
                    self._compile_level, ext, base_compile, level, progress))
            ordered = sorted(self.extensions, key=lambda ext: ext.name in KERNEL_SOURCES)
            builds = [pool.submit(self._build_with_objects, ext, objects[ext.name], progress)
                      for ext in ordered]
            for build in builds:
                build.result()

    def _compile_level(self, ext, base_compile, level, progress):
        """The object file of ext's kernel source compiled for one SIMD level."""
        family = "msvc" if self.compiler.compiler_type == "msvc" else "unix"
        source = KERNEL_SOURCES[ext.name]
        progress(f"compiling csrc/{source} for {level}")
        return self.compiler.compile(
            [os.path.join(CSRC_DIR, source)],
            output_dir=os.path.join(self.build_temp, f"simd_{level}"),
            macros=[("DPO_ISA", level)], include_dirs=ext.include_dirs,
            extra_postargs=base_compile + SIMD_LEVEL_FLAGS[level][family], depends=ext.depends,
        )

    def _build_with_objects(self, ext, level_objects, progress):
        objects = [obj for future in level_objects for obj in future.result()]
        ext.extra_objects = list(ext.extra_objects) + objects
        progress(f"building {ext.name}")
        with self._filter_build_errors(ext):
            self.build_extension(ext)


def _extensions():
    common = dict(include_dirs=[CSRC_DIR], depends=[
        os.path.join(CSRC_DIR, name) for name in sorted(os.listdir(CSRC_DIR))
    ])
    # The entry points build NumPy arrays and read their headers through NumPy's C API (a
    # Python-level np.empty and a memoryview per array would cost microseconds per call).
    # Built against NumPy >= 2 for NumPy's 1.22 API: the modules import with NumPy >= 1.22.
    numpy_api = dict(include_dirs=[CSRC_DIR, numpy.get_include()], depends=common["depends"],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION"),
                                    ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")])
    return [
        Extension(
            "dpo_fast._kernels._pairwise",
            sources=[os.path.join(KERNEL_DIR, "_pairwise.pyx"),
                     os.path.join(CSRC_DIR, "pairwise.c"), os.path.join(CSRC_DIR, "simd.c")],
            **numpy_api,
        ),
        Extension(
            "dpo_fast._kernels._logps",
            sources=[os.path.join(KERNEL_DIR, "_logps.pyx"),
                     os.path.join(CSRC_DIR, "logps.c")],
            **numpy_api,
        ),
        Extension(
            "dpo_fast._kernels._kto",
            sources=[os.path.join(KERNEL_DIR, "_kto.pyx")],
            **numpy_api,
        ),
        Extension(
            "dpo_fast._kernels._sort",
            sources=[os.path.join(KERNEL_DIR, "_sort.pyx")],
            **numpy_api,
        ),
        Extension(
            "dpo_fast._seed",
            sources=[os.path.join("src", "dpo_fast", "_seed.pyx")],
            **common,
        ),
        Extension(
            "dpo_fast._entry",
            sources=[os.path.join("src", "dpo_fast", "_entry.pyx")],
            **numpy_api,
        ),
    ]


directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
    "embedsignature": True,
}

if platform.python_implementation() == "CPython" and sys.version_info >= (3, 13):
    # The kernels hold no Python state across threads, so they are safe without the GIL.
    directives["freethreading_compatible"] = True

setup(
    ext_modules=cythonize(_extensions(), compiler_directives=directives),
    cmdclass={"build_ext": BuildExt},
)
