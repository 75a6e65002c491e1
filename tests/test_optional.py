"""Optional dependencies: missing and installed-but-broken are told apart, with the real error.

A broken install is simulated by a package directory whose ``__init__`` raises the error a
mismatched release raised in practice (``distributed`` 2021.4.1 next to dask 2026.11.0), with a
``.dist-info`` that gives it a version, placed first on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import dpo_fast
from dpo_fast import _optional

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))
BROKEN_ERROR = "cannot import name 'collections_to_dsk' from 'dask.base'"


def _broken_package(root, name, version):
    """A package ``name`` (version ``version`` by its metadata) that fails to import."""
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(f"raise ImportError({BROKEN_ERROR!r})\n")
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def _run_cli(*args, path_first):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path_first), PACKAGE_PARENT,
                                                      env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "dpo_fast", *args], capture_output=True,
                          text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)


def test_missing_package_says_which_extra_installs_it():
    with pytest.raises(ImportError) as info:
        _optional.require("dpo_fast_no_such_module", needed_by="the thing", extra="cli")
    assert str(info.value) == 'the thing needs dpo_fast_no_such_module: pip install "dpo_fast[cli]"'
    version, problem = _optional.status("dpo_fast_no_such_module")
    assert version is None and problem.startswith("ModuleNotFoundError: ")


def test_broken_package_shows_its_own_import_error(tmp_path, monkeypatch):
    _broken_package(tmp_path, "dpo_fast_broken_dep", "2021.4.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        _optional.require("dpo_fast_broken_dep", needed_by="the thing", extra="dask")
    message = str(info.value)
    assert "installed (2021.4.1) but does not import" in message
    assert BROKEN_ERROR in message and "\n" not in message
    assert _optional.status("dpo_fast_broken_dep") == ("2021.4.1", f"ImportError: {BROKEN_ERROR}")


def test_info_reports_a_broken_package_as_unusable_with_its_error(tmp_path):
    _broken_package(tmp_path, "distributed", "2021.4.1")
    proc = _run_cli("info", "--format", "json", path_first=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["optional"]["distributed"] is None
    assert info["optional_errors"]["distributed"] == (
        f"distributed 2021.4.1 is installed but does not import: ImportError: {BROKEN_ERROR}")
    table = _run_cli("info", path_first=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "distributed -" in table.stdout
    assert f"distributed 2021.4.1 is installed but does not import: ImportError: {BROKEN_ERROR}" \
        in table.stdout


def test_scheduler_with_broken_distributed_shows_the_real_error(tmp_path):
    pytest.importorskip("dask.dataframe", reason="needs dask (pip install \"dpo_fast[dask]\")")
    pytest.importorskip("pyarrow", reason="needs pyarrow (pip install \"dpo_fast[cli]\")")
    _broken_package(tmp_path, "distributed", "2021.4.1")
    proc = _run_cli("score", "--example", "--scheduler", "tcp://127.0.0.1:9",
                    path_first=tmp_path)
    assert proc.returncode == 2
    assert "--scheduler needs distributed, which is installed (2021.4.1) but does not import" \
        in proc.stderr
    assert BROKEN_ERROR in proc.stderr
