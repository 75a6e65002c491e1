"""Packaging: the wheel matrix, and what an installed dpo_fast must contain and report.

* The cibuildwheel configuration in pyproject.toml builds exactly the intended wheels on every
  platform (``cibuildwheel --print-build-identifiers``; needs cibuildwheel installed and the
  source tree, no Docker; .ci/wheel-check installs it, elsewhere the test skips).
* The installed package has its type information (``py.typed``, a ``.pyi`` stub next to each
  compiled module), ships no sources or tests, and ``__version__`` is the distribution's version.
* The build is the one expected: ``DPO_FAST_EXPECT_OPENMP=1`` (Linux/Windows wheels, set by
  cibuildwheel and .ci/wheel-check) or ``DPO_FAST_EXPECT_SERIAL=1`` (macOS wheels,
  .ci/serial-build-test) pin ``openmp_enabled()``; x86-64 builds carry the AVX2 clone when the
  CPU has AVX2, aarch64 ones use NEON; free-threaded builds leave the GIL off.
"""

from __future__ import annotations

import ast
import ctypes
import importlib.metadata
import importlib.util
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

import dpo_fast
from dpo_fast._kernels import _pairwise

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Exactly the wheels pyproject.toml's [tool.cibuildwheel] is meant to build, written out.
EXPECTED_BUILDS = {
    "linux": [
        "cp39-manylinux_x86_64", "cp310-manylinux_x86_64", "cp311-manylinux_x86_64",
        "cp312-manylinux_x86_64", "cp313-manylinux_x86_64", "cp314-manylinux_x86_64",
        "cp314t-manylinux_x86_64", "cp315-manylinux_x86_64", "cp315t-manylinux_x86_64",
        "cp39-manylinux_aarch64", "cp310-manylinux_aarch64", "cp311-manylinux_aarch64",
        "cp312-manylinux_aarch64", "cp313-manylinux_aarch64", "cp314-manylinux_aarch64",
        "cp314t-manylinux_aarch64", "cp315-manylinux_aarch64", "cp315t-manylinux_aarch64",
        "cp39-musllinux_x86_64", "cp310-musllinux_x86_64", "cp311-musllinux_x86_64",
        "cp312-musllinux_x86_64", "cp313-musllinux_x86_64", "cp314-musllinux_x86_64",
        "cp314t-musllinux_x86_64", "cp315-musllinux_x86_64", "cp315t-musllinux_x86_64",
    ],
    "macos": [
        "cp39-macosx_x86_64", "cp310-macosx_x86_64", "cp311-macosx_x86_64",
        "cp312-macosx_x86_64", "cp313-macosx_x86_64", "cp314-macosx_x86_64",
        "cp314t-macosx_x86_64", "cp315-macosx_x86_64", "cp315t-macosx_x86_64",
        "cp39-macosx_arm64", "cp310-macosx_arm64", "cp311-macosx_arm64",
        "cp312-macosx_arm64", "cp313-macosx_arm64", "cp314-macosx_arm64",
        "cp314t-macosx_arm64", "cp315-macosx_arm64", "cp315t-macosx_arm64",
    ],
    "windows": [
        "cp39-win_amd64", "cp310-win_amd64", "cp311-win_amd64", "cp312-win_amd64",
        "cp313-win_amd64", "cp314-win_amd64", "cp314t-win_amd64", "cp315-win_amd64",
        "cp315t-win_amd64",
    ],
}

SIMD_NAMES = {"avx512", "avx2", "sse2", "neon", "baseline", "scalar"}
SOURCE_SUFFIXES = {".pyx", ".pxd", ".c", ".h", ".cpp"}


def _cibuildwheel_command():
    if importlib.util.find_spec("cibuildwheel") is not None:
        return [sys.executable, "-m", "cibuildwheel"]
    exe = shutil.which("cibuildwheel")
    return [exe] if exe else None


@pytest.mark.skipif(_cibuildwheel_command() is None,
                    reason="needs cibuildwheel 4.3.5 (.ci/wheel-check installs it)")
@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="needs the source tree")
@pytest.mark.parametrize("target", sorted(EXPECTED_BUILDS))
def test_cibuildwheel_builds_exactly_the_intended_wheels(target, tmp_path):
    # CIBW_* variables (set in the wheels workflow) would override pyproject.toml.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    result = subprocess.run(
        [*_cibuildwheel_command(), "--print-build-identifiers", "--platform", target, str(ROOT)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    identifiers = result.stdout.split()
    assert len(identifiers) == len(set(identifiers))
    assert sorted(identifiers) == sorted(EXPECTED_BUILDS[target])


def _installed_distribution():
    """The dpo_fast distribution that the imported package comes from, or None."""
    try:
        dist = importlib.metadata.distribution("dpo_fast")
    except importlib.metadata.PackageNotFoundError:
        return None
    init = pathlib.Path(dist.locate_file("dpo_fast/__init__.py"))
    if not init.exists() or not init.samefile(dpo_fast.__file__):
        return None  # an in-place build or another checkout shadows the installed one
    return dist


def test_version_is_the_distribution_version():
    dist = _installed_distribution()
    if dist is None:
        pytest.skip("dpo_fast is not imported from an installed distribution")
    assert dpo_fast.__version__ == dist.version == importlib.metadata.version("dpo_fast")


def test_version_has_one_source():
    from dpo_fast import _version

    assert dpo_fast.__version__ == _version.__version__
    if not (ROOT / "src" / "dpo_fast" / "_version.py").exists():
        pytest.skip("needs the source tree")
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert 'version = { attr = "dpo_fast._version.__version__" }' in text


COMPILED = ["dpo_fast._seed", "dpo_fast._entry", "dpo_fast._kernels._pairwise",
            "dpo_fast._kernels._logps", "dpo_fast._kernels._sort", "dpo_fast._kernels._kto"]


def test_every_compiled_module_is_listed():
    """COMPILED (the stub test below) names every extension setup.py builds."""
    if not (ROOT / "setup.py").is_file():
        pytest.skip("needs the source tree")
    built = re.findall(r'Extension\(\s*"([\w.]+)"', (ROOT / "setup.py").read_text())
    assert sorted(built) == sorted(COMPILED)


@pytest.mark.parametrize("module", COMPILED)
def test_stub_next_to_compiled_module(module):
    origin = pathlib.Path(importlib.util.find_spec(module).origin)
    assert origin.suffix in {".so", ".pyd"}, f"{module} is not compiled: {origin}"
    stub = origin.parent / (module.rsplit(".", 1)[1] + ".pyi")
    assert stub.is_file(), f"missing type stub {stub}"
    # ...and it declares every public function and class the module defines.
    declared = {node.name for node in ast.parse(stub.read_text()).body
                if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    compiled = importlib.import_module(module)
    public = {name for name, value in vars(compiled).items()
              if not name.startswith("_") and callable(value)
              and getattr(value, "__module__", module) == module}
    assert public <= declared, f"{stub.name} lacks {sorted(public - declared)}"


def test_py_typed_marker():
    assert (pathlib.Path(dpo_fast.__file__).parent / "py.typed").is_file()


def test_installed_files():
    """What the wheel put in site-packages: the modules, stubs and marker; no sources, no tests."""
    dist = _installed_distribution()
    if dist is None or not any(str(f) == "dpo_fast/__init__.py" for f in dist.files or ()):
        pytest.skip("dpo_fast is not installed from a wheel")
    files = [pathlib.PurePosixPath(str(f)) for f in dist.files]
    names = {str(f) for f in files}
    for required in ("dpo_fast/py.typed", *(name.replace(".", "/") + ".pyi" for name in COMPILED)):
        assert required in names
    assert not [str(f) for f in files if f.suffix in SOURCE_SUFFIXES]
    assert not [str(f) for f in files if f.parts[0] in {"tests", "bench"} or "csrc" in f.parts]


def test_expected_build_flavour():
    if os.environ.get("DPO_FAST_EXPECT_OPENMP") == "1":
        assert dpo_fast.openmp_enabled(), "this build was expected to have OpenMP"
    if os.environ.get("DPO_FAST_EXPECT_SERIAL") == "1":
        assert not dpo_fast.openmp_enabled(), "this build was expected to be serial"
    assert dpo_fast.simd_level() in SIMD_NAMES


def _cpu_has_avx2():
    """Whether the CPU (and OS) support AVX2, asked without dpo_fast; None if unknown."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        return "avx2" in line.split()
        except OSError:
            return None
    elif sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.leaf7_features"],
                             capture_output=True, text=True)
        return "AVX2" in out.stdout.split() if out.returncode == 0 else None
    elif sys.platform == "win32":
        return bool(ctypes.windll.kernel32.IsProcessorFeaturePresent(40))  # PF_AVX2_...
    return None


MACHINE = platform.machine().lower()


@pytest.mark.skipif(MACHINE not in ("x86_64", "amd64"), reason="x86-64 only")
def test_x86_64_build_has_the_simd_clones():
    if not _cpu_has_avx2():
        pytest.skip("this CPU has no AVX2 (or it cannot be asked)")
    assert "avx2" in _pairwise.supported_simd_levels()
    assert "sse2" in _pairwise.supported_simd_levels()


@pytest.mark.skipif(MACHINE not in ("aarch64", "arm64"), reason="aarch64 only")
def test_aarch64_build_uses_neon():
    assert "neon" in _pairwise.supported_simd_levels()


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="free-threaded Python only")
def test_free_threaded_import_keeps_the_gil_off():
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c",
         "import dpo_fast, sys; print(sys._is_gil_enabled())"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _requirements_by_extra():
    """{extra: [requirement text, ...]} from the installed distribution's metadata."""
    try:
        requires = importlib.metadata.requires("dpo_fast") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("dpo_fast is not imported from an installed distribution")
    by_extra = {}
    for requirement in requires:
        text, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        by_extra.setdefault(extra.group(1) if extra else None, []).append(text.strip())
    return by_extra


def test_every_extra_with_dask_ties_distributed_to_the_same_release():
    """dask and distributed are released in lockstep; listed separately, a resolver once kept
    the newest dask and walked back to a years-old distributed that does not import. dask's own
    ``distributed`` extra pins the matching release, so every extra must ask through it."""
    by_extra = _requirements_by_extra()
    with_dask = {extra: reqs for extra, reqs in by_extra.items()
                 if any(re.match(r"(dask|distributed)\b", r) for r in reqs)}
    assert {"dask", "test"} <= set(with_dask)
    for extra, reqs in with_dask.items():
        names = [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in reqs]
        assert "distributed" not in names, f"[{extra}] lists distributed on its own: {reqs}"
        dask = next(r for r in reqs if r.startswith("dask"))
        assert re.match(r"dask\[[^\]]*\bdistributed\b[^\]]*\]\s*>=", dask), (extra, dask)


def test_ci_runs_the_readme_commands_verbatim_in_a_fresh_venv():
    readme, ci = ROOT / "README.md", ROOT / ".ci" / "run"
    if not (readme.exists() and ci.exists()):
        pytest.skip("needs the source tree")
    block = re.search(r"## Set-up: the two commands.*?```bash\n(.*?)```", readme.read_text(),
                      flags=re.S)
    commands = [line for line in block.group(1).splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands == ['pip install . && dpo-fast bench', 'pip install ".[test]" && pytest']
    lines = [line.strip() for line in ci.read_text().splitlines()]
    for command in commands:
        assert command in lines, f".ci/run does not run {command!r} verbatim"
    # ... after creating a brand-new venv (the helper .ci/run sources) and entering it
    assert "source .ci/fresh-venv" in lines
    helper = (ROOT / ".ci" / "fresh-venv").read_text()
    assert 'python3 -m venv "$1"' in helper and 'source "$1/bin/activate"' in helper
    first_command = lines.index(commands[0])
    assert any(line.startswith("fresh_venv ") for line in lines[:first_command])
