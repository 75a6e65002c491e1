"""The dpo-fast command line: --version, bench --quick, and usage errors (exit status 2)."""

import json
import os
import subprocess
import sys

import pytest

import dpo_fast
from dpo_fast import cli


def _run(*args, timeout=120):
    """`python -m dpo_fast ARGS` in a child that imports the same dpo_fast as the tests."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(dpo_fast.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent,
                                                      env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "dpo_fast", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_version():
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"dpo-fast {dpo_fast.__version__}"


def test_bench_quick(tmp_path):
    path = tmp_path / "bench.json"
    proc = _run("bench", "--quick", "--no-torch", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    for heading in ("List call", "Arrays", "Accuracy", "SIMD code paths", "Targets",
                    "accuracy checks: all passed"):
        assert heading in proc.stdout
    results = json.loads(path.read_text())
    assert results["checks_passed"] is True
    assert results["machine"]["torch"] is None


@pytest.mark.parametrize("args", [(), ("no-such-command",), ("bench", "--sizes", "0")])
def test_bad_arguments_exit_2(args):
    proc = _run(*args)
    assert proc.returncode == 2
    assert "usage: dpo-fast" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["bench", "--dtypes", "int8"], ["bench", "--threads", "0"],
                                  ["bench", "--repeats", "many"], ["bench", "--bogus"]])
def test_bad_arguments_exit_2_in_process(args, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    assert "usage: dpo-fast" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command.name in out
