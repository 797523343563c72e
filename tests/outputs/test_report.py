"""`mien report`: one self-contained HTML file, checked statically and in headless Chromium."""

import base64
import io
import re
import shutil
import subprocess

import pytest

from tests.outputs.conftest import ERROR_MESSAGE, mien

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                    reason=f"{CHROMIUM} not installed (apt-get install -y chromium; `make test` "
                                           f"installs it)")


@pytest.fixture(scope="module")
def report(annotated, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert mien("report", "--input", annotated.root, "--output", path) == 0
    return path


def test_report_is_self_contained_and_escaped(report):
    text = report.read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text
    external = [u for u in re.findall(r'(?:src|href)="([^"]+)"', text) if not u.startswith("data:")]
    assert external == []
    assert "http://www.w3.org/2000/svg" in text  # the only URL: the SVG namespace, never fetched
    assert "https://" not in text
    assert "&lt;moov&gt; &amp; &#x27;ftyp&#x27;" in text and "<moov>" not in text  # user data escaped
    images = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(images) == 4  # best face per (track, expression): track 0 x 2 labels, track 1 x 2 labels
    from PIL import Image

    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert max(im.size) <= 128 and im.getextrema()[0][1] > 0


def _chromium(tmp_path, *args):
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=60)


@needs_chromium
def test_report_renders_in_chromium(report, tmp_path):
    shot = tmp_path / "report.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        pixels = im.convert("RGB")
        assert pixels.size == (1280, 2000)
        colors = pixels.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200  # text, charts and photos, not a blank page
    counts = {c: n for n, c in colors}
    assert counts.get((242, 180, 0), 0) > 500  # the happiness bar is drawn (palette colour)
    assert counts.get((255, 255, 255), 0) < 0.9 * 1280 * 2000

    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    table = re.search(r'<table id="video-table">(.*?)</table>', dom, re.S)
    assert table is not None
    assert len(re.findall(r'<tr class="status-error">', table.group(1))) == 1
    assert len(re.findall(r'<tr class="status-ok">', table.group(1))) == 2
    assert ERROR_MESSAGE.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in table.group(1)
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', dom)) == 4
    assert len(re.findall(r"<svg ", dom)) == 2
    assert "<script" not in dom
