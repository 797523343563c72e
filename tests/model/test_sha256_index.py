"""Large base files are hashed once per machine, and again as soon as they change."""

from __future__ import annotations

import os


def test_large_files_are_hashed_once_and_again_when_changed(tmp_path, monkeypatch):
    import workflows.core.assets as assets
    from model.model_dir import file_sha256s

    monkeypatch.setenv("MIEN_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "base"
    base.mkdir()
    big = base / "model.safetensors"
    big.write_bytes(os.urandom(2 << 20))
    (base / "config.json").write_text("{}")
    calls = []
    real = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda p: calls.append(os.path.basename(p)) or real(p))
    first = file_sha256s(base)
    assert sorted(calls) == ["config.json", "model.safetensors"]
    calls.clear()
    assert file_sha256s(base) == first and calls == ["config.json"]  # the big file came from the index
    data = bytearray(big.read_bytes())
    data[0] ^= 0xFF
    big.write_bytes(bytes(data))  # same size, new content
    st = big.stat()
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed = file_sha256s(base)
    assert "model.safetensors" in calls and changed["model.safetensors"] != first["model.safetensors"]
    assert changed["model.safetensors"] == real(big)
