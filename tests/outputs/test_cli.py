"""The output subcommands' argparse wiring: instant start, working --help."""

import argparse
import subprocess
import sys

import pytest

from jobs import outputs_cmd

HEAVY = ("pyarrow", "av", "cv2", "pandas", "numpy", "PIL", "workflows.outputs")


def test_registering_the_commands_imports_nothing_heavy():
    code = ("import argparse, sys\nfrom jobs import outputs_cmd\n"
            "p = argparse.ArgumentParser()\noutputs_cmd.add_parsers(p.add_subparsers(dest='command'))\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv", [["render", "--help"], ["report", "--help"], ["export", "--help"],
                                  ["export", "openface", "--help"], ["export", "hf", "--help"],
                                  ["inspect", "--help"]])
def test_help(argv, capsys):
    parser = argparse.ArgumentParser(prog="mien")
    outputs_cmd.add_parsers(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 0
    assert "usage: mien " + argv[0] in capsys.readouterr().out


def test_export_without_a_format_says_which(annotated, capsys):
    from tests.outputs.conftest import mien

    assert mien("export") == 2
    assert "openface or hf" in capsys.readouterr().err
