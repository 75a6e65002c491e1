#!/usr/bin/env python3
"""The aarch64 kernels, bit for bit against x86-64, under user-mode emulation (issue 19).

    python3 scripts/aarch64_check.py            # the full grid, every SIMD level, + the
                                                # aarch64 vectoriser report
    python3 scripts/aarch64_check.py --quick    # the reduced grid (what CI runs, via
                                                # tests/test_aarch64.py)

Compiles scripts/aarch64/harness.c with the kernels of src/dpo_fast/_kernels/csrc/ twice:
natively for x86-64 and with Debian's aarch64 cross compiler, each with the wheel build's
flags (setup.py's GCC_FLAGS: -O3 -ffp-contract=off, no fast-math) and each kernel source
(setup.py's KERNEL_SOURCES) once per SIMD level with its SIMD_LEVEL_FLAGS, as setup.py builds
the extension. The harness calls the entry points the extension calls (dpo_chunk_f64/f32 and
dpo_combine_sums, dpo_logps_forward/backward, dpo_round4, the radix sort) over a fixed grid
of inputs it generates itself, and prints a hash of every output per case. The x86-64 build
runs once per SIMD level this CPU has (scalar, sse2, avx2, avx512), the aarch64 build under
qemu-aarch64-static once per aarch64 level (scalar, neon); every run must print the same
hashes as x86-64's sse2 run. On a difference the script names the first differing case and,
from a dump of both runs, its first differing output value.

Then (unless --no-vec) it runs the vectoriser-report tests of the aarch64 build
(tests/test_aarch64.py -k vectorised: the cross compiler's -fopt-info-vec-optimized report
on the loops tests/test_vectorization.py and tests/test_logps_vectorisation.py check on x86-64),
which need pytest and the package importable (pip install ".[test]" from the clone).

Missing tools are installed with apt-get (Debian/Ubuntu: gcc-aarch64-linux-gnu,
libc6-dev-arm64-cross and qemu-user-static), through sudo when not root; --no-install only
reports them. Standard library only; exit status 0 when every run matches.
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "src" / "dpo_fast" / "_kernels" / "csrc"
HARNESS = ROOT / "scripts" / "aarch64" / "harness.c"
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"
# libc6-dev-arm64-cross (the C library's headers for the cross compiler) is only a
# recommendation of gcc-aarch64-linux-gnu, which --no-install-recommends leaves out: without
# it every compile stops at <math.h>.
PACKAGES = ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user-static")
CROSS_HEADER = pathlib.Path("/usr/aarch64-linux-gnu/include/math.h")
# The C files around the per-level kernel sources (linked once): the dispatch entry points,
# the chosen level, the loss registry as data.
COMMON_SOURCES = ("pairwise.c", "simd.c", "logps.c")
X86_LEVEL_ORDER = ("scalar", "baseline", "avx2", "avx512")
AARCH64_LEVELS = ("scalar", "baseline")
REFERENCE = ("x86_64", "baseline")


def setup_constant(name: str):
    """A literal module-level constant of setup.py, read without running it (as
    tests/helpers.py does)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == name for target in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"aarch64_check: {name} not found in setup.py")


def missing_tools() -> list[str]:
    missing = [tool for tool in (CROSS_CC, QEMU) if shutil.which(tool) is None]
    if shutil.which(CROSS_CC) is not None and platform.system() == "Linux" \
            and shutil.which("dpkg") is not None and not CROSS_HEADER.exists():
        missing.append(f"the cross C library's headers ({CROSS_HEADER})")
    return missing


def ensure_tools(install: bool) -> None:
    """The cross compiler and qemu on PATH, installed with apt-get if missing and allowed."""
    if not missing_tools():
        return
    if not install:
        raise SystemExit(f"aarch64_check: missing {', '.join(missing_tools())}; install the "
                         f"Debian packages {' '.join(PACKAGES)} (or run without --no-install)")
    if shutil.which("apt-get") is None:
        raise SystemExit(f"aarch64_check: missing {', '.join(missing_tools())} and no apt-get "
                         f"to install them: install {' '.join(PACKAGES)} (or your "
                         f"distribution's aarch64 cross gcc and qemu-user) by hand")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise SystemExit(f"aarch64_check: installing {' '.join(PACKAGES)} needs root and "
                             f"there is no sudo: run `apt-get install -y {' '.join(PACKAGES)}` "
                             f"as root")
        prefix = ["sudo", "-n"] if not sys.stdin.isatty() else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install_cmd = prefix + ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    print(f"aarch64_check: installing {' '.join(PACKAGES)}: {' '.join(install_cmd)}",
          flush=True)
    if subprocess.run(install_cmd, env=env).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(prefix + ["apt-get", "update"], env=env)
        if subprocess.run(install_cmd, env=env).returncode != 0:
            raise SystemExit(f"aarch64_check: could not install {' '.join(PACKAGES)} "
                             f"(see apt-get's message above); install them as root")
    if missing_tools():
        raise SystemExit(f"aarch64_check: still missing {', '.join(missing_tools())} after "
                         f"installing {' '.join(PACKAGES)}")


def x86_levels_here() -> list[str]:
    """The x86-64 SIMD levels this CPU runs (simd.c's detection, from /proc/cpuinfo)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo")
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    levels = ["scalar", "baseline"]
    if "avx2" in flags:
        levels.append("avx2")
        if {"avx512f", "avx512dq", "avx512vl"} <= set(flags):
            levels.append("avx512")
    return levels


def build_plan(target: str, levels: list[str], workdir: pathlib.Path,
               extra_flags: tuple[str, ...] = (), vec_report: bool = False):
    """The compiles and the link of the harness for target ("x86_64" or "aarch64") with the
    kernel instances of `levels` (scalar and baseline always: the dispatch falls back to them):
    ([(key, compile command)], link command, executable). A kernel instance's key is
    (source, level), other objects' None. With vec_report, the kernel instances are compiled
    with -fopt-info-vec-optimized too: a report on stderr, the same code."""
    gcc_flags = [*setup_constant("GCC_FLAGS"), *extra_flags]
    level_flags = setup_constant("SIMD_LEVEL_FLAGS")
    kernel_sources = list(setup_constant("KERNEL_SOURCES").values())
    x86_levels = setup_constant("X86_LEVELS")
    cc = "gcc" if target == "x86_64" else CROSS_CC
    levels = list(dict.fromkeys(["scalar", "baseline", *levels]))
    clones = target == "x86_64" and any(level in x86_levels for level in levels)
    if clones:  # DPO_X86_CLONES declares both x86 instances: build them both
        levels = list(dict.fromkeys([*levels, *x86_levels]))
    defines = ["-DDPO_X86_CLONES=1"] if clones else []
    report = ["-fopt-info-vec-optimized"] if vec_report else []
    out = workdir / target
    out.mkdir(parents=True, exist_ok=True)
    compiles = []
    for level in levels:
        for source in kernel_sources:
            obj = out / f"{pathlib.Path(source).stem}_{level}.o"
            compiles.append(((source, level), [
                cc, *gcc_flags, f"-DDPO_ISA={level}", *level_flags[level]["unix"], *defines,
                *report, "-I", str(CSRC), "-c", str(CSRC / source), "-o", str(obj)]))
    for source in COMMON_SOURCES:
        compiles.append((None, [cc, *gcc_flags, *defines, "-I", str(CSRC), "-c",
                                str(CSRC / source), "-o",
                                str(out / f"{pathlib.Path(source).stem}.o")]))
    compiles.append((None, [cc, *gcc_flags, *defines, "-I", str(CSRC), "-c", str(HARNESS),
                            "-o", str(out / "harness.o")]))
    exe = out / "harness"
    # Static for aarch64: qemu then needs no aarch64 sysroot at run time.
    link = [cc, *gcc_flags, *[cmd[-1] for _, cmd in compiles], "-o", str(exe), "-lm"]
    if target == "aarch64":
        link.insert(1, "-static")
    return compiles, link, exe


def _compile(cmd: list[str]) -> str:
    """Run one compile or link; its stderr (the vectoriser report, if asked for)."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"aarch64_check: compile failed: {' '.join(cmd)}\n{result.stderr}")
    return result.stderr


def build(plans: dict, jobs: int) -> dict:
    """Every target's compiles in one pool (the longest first, so that the two targets' builds
    overlap on every core), then the links; {target: {key: stderr}} of the kernel instances."""
    compiles = [(target, key, cmd) for target, (commands, _, _) in plans.items()
                for key, cmd in commands]
    compiles.sort(key=lambda item: item[1] is None)  # kernel instances (the long ones) first
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        stderrs = list(pool.map(lambda item: _compile(item[2]), compiles))
        list(pool.map(_compile, [link for _, link, _ in plans.values()]))
    reports = {target: {} for target in plans}
    for (target, key, _), stderr in zip(compiles, stderrs):
        if key is not None:
            reports[target][key] = stderr
    return reports


def run_harness(exe: pathlib.Path, target: str, level: str, quick: bool,
                dump: str | None = None) -> tuple[str, dict[str, str], dict[str, str]] | None:
    """(level name, {case: hash}, {"cases": ..., "values": ...}) of one run, or None when the
    level is not available here; with dump, the dump's text as the level name's place."""
    cmd = ([QEMU] if target == "aarch64" else []) + [str(exe), level]
    if quick:
        cmd.append("quick")
    if dump is not None:
        cmd += ["dump", dump]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode == 3:
        return None
    if result.returncode != 0:
        raise SystemExit(f"aarch64_check: {' '.join(cmd)} failed ({result.returncode}):\n"
                         f"{result.stderr}")
    hashes, meta = {}, {}
    name = level
    for line in result.stdout.splitlines():
        if line.startswith("# level "):
            name = line[len("# level "):]
        elif line.startswith("# "):
            key, _, value = line[2:].rpartition(" ")
            meta[key] = value
        elif dump is None:
            case, _, digest = line.rpartition(" ")
            hashes[case] = digest
    if dump is not None:
        return name, {"dump": result.stdout}, meta
    return name, hashes, meta


def first_difference(exes, ref_key, other_key, case, quick) -> str:
    """The first output value of `case` that differs between two runs, from their dumps."""
    dumps = []
    for target, level in (ref_key, other_key):
        dumps.append(run_harness(exes[target], target, level, quick, dump=case)[1]["dump"]
                     .splitlines())
    ref_lines = [line for line in dumps[0] if not line.startswith("#")]
    other_lines = [line for line in dumps[1] if not line.startswith("#")]
    for ref_line, other_line in zip(ref_lines, other_lines):
        if ref_line != other_line:
            return f"first differing value: {ref_line}  vs  {other_line}"
    if len(ref_lines) != len(other_lines):
        return f"dumps differ in length: {len(ref_lines)} vs {len(other_lines)} values"
    return "(the dumps agree: the difference is in a NaN's canonical form?)"


def check(quick: bool = False, x86_levels: list[str] | None = None, jobs: int | None = None,
          workdir: pathlib.Path | None = None, log=print,
          cross_flags: tuple[str, ...] = (), vec_reports: dict | None = None) -> bool:
    """Build, run and compare; True when every run gives the reference's bits. Given a dict as
    vec_reports, the aarch64 kernel instances are compiled with the vectoriser report, which
    goes into it as {(source, level): report} (tests/test_aarch64.py reads it: one compile of
    each instance serves both checks)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit("aarch64_check: runs on an x86-64 host (it compares against it)")
    if missing_tools():
        raise SystemExit(f"aarch64_check: missing {', '.join(missing_tools())}")
    jobs = jobs or os.cpu_count() or 1
    x86_levels = x86_levels or x86_levels_here()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dpo_fast-aarch64.") as tmp:
        work = workdir or pathlib.Path(tmp)
        log(f"aarch64_check: building the harness for x86-64 ({', '.join(x86_levels)}) and "
            f"aarch64 ({', '.join(AARCH64_LEVELS)}) with {' '.join(setup_constant('GCC_FLAGS'))}")
        plans = {"x86_64": build_plan("x86_64", x86_levels, work),
                 "aarch64": build_plan("aarch64", list(AARCH64_LEVELS), work, cross_flags,
                                       vec_report=vec_reports is not None)}
        reports = build(plans, jobs)
        if vec_reports is not None:
            vec_reports.update(reports["aarch64"])
        exes = {target: plan[2] for target, plan in plans.items()}
        log(f"aarch64_check: built in {time.monotonic() - started:.0f} s; running "
            f"{'the reduced' if quick else 'the full'} grid")
        runs = [("x86_64", level) for level in x86_levels]
        runs += [("aarch64", level) for level in AARCH64_LEVELS]
        results = {}
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {key: pool.submit(run_harness, exes[key[0]], key[0], key[1], quick)
                       for key in runs}
            for key, future in futures.items():
                results[key] = future.result()
        reference = results[REFERENCE]
        ok = True
        for key in runs:
            if results[key] is None:
                log(f"  {key[0]} {key[1]}: not available on this CPU, skipped")
                continue
            name, hashes, meta = results[key]
            ref_hashes = reference[1]
            differing = [case for case in ref_hashes if hashes.get(case) != ref_hashes[case]]
            extra = [case for case in hashes if case not in ref_hashes]
            label = f"{key[0]} {name}"
            if not differing and not extra:
                log(f"  {label:16s} {meta.get('cases')} cases, {meta.get('values')} values: "
                    f"bit-identical to x86_64 {reference[0]}")
                continue
            ok = False
            log(f"  {label:16s} DIFFERS from x86_64 {reference[0]} in {len(differing)} of "
                f"{len(ref_hashes)} cases" + (f" ({len(extra)} extra cases)" if extra else ""))
            if differing:
                log(f"    first: {differing[0]}")
                log("    " + first_difference(exes, REFERENCE, key, differing[0], quick))
                for case in differing[1:10]:
                    log(f"    also: {case}")
        log(f"aarch64_check: {'all runs bit-identical' if ok else 'DIFFERENCES FOUND'} "
            f"({reference[2].get('cases')} cases x {len(runs)} runs, "
            f"{time.monotonic() - started:.0f} s)")
        return ok


def run_vectoriser_tests() -> bool:
    """The aarch64 vectoriser-report tests, in this interpreter's pytest."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_aarch64.py"), "-k", "vectorised"]
    print(f"aarch64_check: vectoriser report: {' '.join(cmd)}", flush=True)
    env = dict(os.environ, DPO_FAST_REQUIRE_AARCH64="1")
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced grid of CI")
    parser.add_argument("--no-install", action="store_true",
                        help="do not apt-get install missing tools; fail instead")
    parser.add_argument("--install-only", action="store_true",
                        help="install the missing tools, nothing else")
    parser.add_argument("--no-vec", action="store_true",
                        help="skip the vectoriser-report tests (they need pytest and the "
                             "package importable)")
    parser.add_argument("--x86-levels", default=None,
                        help="comma list of x86-64 levels to run (default: all this CPU has)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles and runs")
    parser.add_argument("--keep", type=pathlib.Path, default=None,
                        help="build in this directory and keep it")
    parser.add_argument("--cross-cflags", default="",
                        help="extra flags for the aarch64 build only, to see the check fail: "
                             "e.g. --cross-cflags=-ffp-contract=fast (fused multiply-adds) "
                             "must give other bits")
    args = parser.parse_args(argv)
    ensure_tools(install=not args.no_install)
    if args.install_only:
        return 0
    levels = args.x86_levels.split(",") if args.x86_levels else None
    if levels is not None and "baseline" not in levels:
        levels.insert(0, "baseline")  # the reference
    ok = check(quick=args.quick, x86_levels=levels, jobs=args.jobs, workdir=args.keep,
               cross_flags=tuple(args.cross_cflags.split()))
    if not args.no_vec:
        try:
            import pytest  # noqa: F401
        except ImportError:
            print('aarch64_check: the vectoriser report needs pytest and the package: '
                  'pip install ".[test]" (or pass --no-vec)')
            return 1
        ok = run_vectoriser_tests() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
