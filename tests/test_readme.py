"""The README's Python examples run as written (on a tiny synthetic dataset), and the commands it
names exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cvpipe.cli import build_parser
from tests import synthetic

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index, tmp_path, monkeypatch):
    synthetic.write_image_folder(tmp_path / "cifar", n_train=10, n_test=2)
    monkeypatch.setenv("CVPIPE_CIFAR10_SOURCE", str(tmp_path / "cifar"))
    monkeypatch.chdir(tmp_path)
    exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index}", "exec"), {})


def test_there_are_examples():
    assert len(PYTHON_BLOCKS) >= 2


def _cvpipe_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("cvpipe ") and "[" not in line:  # "[--opt]": a synopsis, not a command
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", _cvpipe_lines())
def test_every_cvpipe_command_in_the_readme_parses(line):
    """Every `cvpipe ...` line of the README is accepted by the command-line parser as written."""
    build_parser().parse_args(shlex.split(line)[1:])


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_contents_list_every_section_and_each_link_finds_its_heading():
    contents = README.split("Contents:", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"^- \[(.+)\]\(#(.+)\)$", contents, re.M)
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert [title for title, _ in links] == headings
    assert all(anchor == _slug(title) for title, anchor in links)
