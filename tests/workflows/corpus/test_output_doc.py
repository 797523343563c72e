"""docs/OUTPUT.md, the output contract users read, names every column of every table."""

from pathlib import Path

from workflows.corpus import schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "OUTPUT.md"


def test_every_column_is_documented():
    text = DOC.read_text()
    for name, table in schema.TABLES.items():
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        missing = [f.name for f in table if f"`{f.name}`" not in section]
        assert not missing, f"docs/OUTPUT.md, section {name}: undocumented columns {missing}"
