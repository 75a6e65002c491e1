"""The examples in the docstrings and the README run and print what they claim."""

import doctest
import pathlib
import re

import pytest

import dpo_fast
import dpo_fast._entry
import dpo_fast._seed
import dpo_fast.kto
import dpo_fast.ld_dpo
import dpo_fast.linear_logps

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("module", [dpo_fast, dpo_fast._entry, dpo_fast._seed, dpo_fast.kto,
                                    dpo_fast.ld_dpo, dpo_fast.linear_logps])
def test_docstring_examples(module):
    # (preference_loss's examples live where it is defined: the compiled dpo_fast._entry.)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if module is not dpo_fast:
        assert result.attempted > 0


@pytest.mark.skipif(not README.exists(), reason="needs the source tree")
def test_readme_python_blocks_run():
    """Every ```python block of the README executes (doctest-style ones are checked)."""
    text = README.read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        if block.lstrip().startswith(">>>"):
            if "simd_level()" in block:  # machine-dependent output
                continue
            parser = doctest.DocTestParser()
            test = parser.get_doctest(block, {}, "README", str(README), 0)
            runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
            runner.run(test)
            assert runner.failures == 0
        else:
            exec(compile(block, str(README), "exec"), {})
