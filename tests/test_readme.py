"""The README's "Your own model" examples run and print what the README shows (slow: real ticket searches)."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROUND = re.compile(r"round (\d+): density ([\d.]+), test accuracy ([\d.]+)")


def _examples():
    """`{file name: (code, printed output)}` of the README's "Your own model" section.

    Each example is a python block whose first line names its file (`# bert_ticket.py`), followed by
    the text block of what it printed.
    """
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Your own model\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n# (\w+\.py)\n(.*?)```.*?```text\n(.*?)```", section, re.S)
    return {name: (code, printed) for name, code, printed in blocks}


def test_the_section_shows_both_examples_with_their_output():
    examples = _examples()
    assert set(examples) == {"bert_ticket.py", "mobilenet_ticket.py"}
    for code, printed in examples.values():
        assert len(ROUND.findall(printed)) == 4 and "TicketSearch" in code


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert_ticket.py", "mobilenet_ticket.py"])
def test_an_example_prints_the_densities_and_accuracies_the_readme_shows(name, tmp_path):
    code, printed = _examples()[name]
    (tmp_path / name).write_text(code)
    result = subprocess.run([sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, found = ROUND.findall(printed), ROUND.findall(result.stdout)
    assert [(r, d) for r, d, _ in found] == [(r, d) for r, d, _ in expected]
    for (_, _, accuracy), (_, _, shown) in zip(found, expected):  # Other CPUs may round differently.
        assert float(accuracy) == pytest.approx(float(shown), abs=0.02)
