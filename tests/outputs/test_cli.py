"""The output subcommands' argparse wiring: instant start, working --help."""

import subprocess
import sys

import pytest

from jobs.cli import build_parser

HEAVY = ("pyarrow", "av", "cv2", "pandas", "numpy", "PIL", "workflows.outputs")


def test_registering_the_commands_imports_nothing_heavy():
    code = ("import sys\nfrom jobs.cli import build_parser\nbuild_parser()\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv", [["render", "--help"], ["report", "--help"], ["export", "--help"],
                                  ["export", "openface", "--help"], ["export", "hf", "--help"],
                                  ["inspect", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    assert "usage: mien " + argv[0] in capsys.readouterr().out


def test_export_without_a_format_says_which(annotated, capsys):
    from tests.outputs.conftest import mien

    assert mien("export") == 2
    assert "openface or hf" in capsys.readouterr().err


def test_bad_output_paths_are_messages_not_tracebacks(annotated, tmp_path, capsys):
    from tests.outputs.conftest import mien

    existing = tmp_path / "a_file"
    existing.write_text("x")
    assert mien("export", "openface", "--input", str(annotated.root), "--output", str(existing)) == 2
    assert "File exists" in capsys.readouterr().err
    assert mien("report", "--input", str(annotated.root), "--output", str(existing / "r.html")) == 2
    assert "check the path you gave" in capsys.readouterr().err


def test_inspect_into_a_closed_pipe_exits_quietly(annotated, monkeypatch):
    """`mien inspect out --json | head -1`: the reader left early; exit 0, no BrokenPipe traceback."""
    import os

    from tests.outputs.conftest import mien

    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    closed = os.fdopen(w, "w")
    monkeypatch.setattr(sys, "stdout", closed)
    try:
        assert mien("inspect", str(annotated.root), "--json") == 0
    finally:
        monkeypatch.undo()
        closed.close()
