"""Every command's help renders: argparse formats help strings with %-interpolation, so one stray '%' in a
help text makes `vireid --help` (and that sub-command's --help) crash with a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from vireid.cli import build_parser


def _sub_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def test_top_level_help_lists_every_command():
    text = build_parser().format_help()
    for name in _sub_parsers():
        assert name in text


@pytest.mark.parametrize("name", sorted(_sub_parsers()))
def test_each_command_help_renders(name):
    text = _sub_parsers()[name].format_help()
    assert text.startswith("usage: ") and name in text


def test_python_dash_m_vireid_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "vireid", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from vireid import __version__

    assert done.stdout.strip() == __version__
