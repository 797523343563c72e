"""One colour per expression, shared by the rendered video and the HTML report so a label
reads the same everywhere."""

from __future__ import annotations

FE_COLORS: dict[str, str] = {
    "neutral": "#9aa0a6",
    "happiness": "#f2b400",
    "sadness": "#3b78d8",
    "surprise": "#00a5a8",
    "fear": "#8e5bd6",
    "disgust": "#43a047",
    "anger": "#e53935",
    "contempt": "#a1665e",
}
UNKNOWN_COLOR = "#607d8b"
AU_COLOR = "#5c6bc0"
ERROR_COLOR = "#c62828"


def fe_color(label: str | None) -> str:
    """Hex colour of an expression label (a neutral slate for unknown labels)."""
    return FE_COLORS.get(str(label), UNKNOWN_COLOR)


def rgb(hex_color: str) -> tuple[int, int, int]:
    """``"#f2b400"`` -> ``(242, 180, 0)``."""
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
