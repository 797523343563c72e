import os
from pathlib import Path

import pytest

from workflows.core import storage


def test_local_roundtrip_atomic_and_listing(tmp_path):
    uri = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    assert not [p for p in os.listdir(tmp_path / "a") if p.startswith(".tmp-")]
    storage.write_text(str(tmp_path / "a" / "c.TXT"), "x")
    assert storage.list_files(str(tmp_path)) == sorted([uri, str(tmp_path / "a" / "c.TXT")])
    assert storage.list_files(str(tmp_path), (".txt",)) == [str(tmp_path / "a" / "c.TXT")]
    with storage.open_input(uri) as f:
        assert f.read(2) == b"he"


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    uri = str(tmp_path / "x.bin")
    storage.write_bytes(uri, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        storage.write_bytes(uri, b"new")
    assert Path(uri).read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_missing_root_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.list_files(str(tmp_path / "nope"))


def test_retries_transient_then_succeeds(monkeypatch):
    monkeypatch.setattr(storage, "RETRY_BASE_DELAY_S", 0.001)
    calls = {"n": 0}

    @storage.with_retries
    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("Connection reset by peer")
        return "ok"

    assert flaky() == "ok" and calls["n"] == 3

    @storage.with_retries
    def permanent():
        calls["n"] += 1
        raise PermissionError("denied")

    calls["n"] = 0
    with pytest.raises(PermissionError):
        permanent()
    assert calls["n"] == 1


def test_s3_roundtrip_listing_streaming(s3_bucket):
    uri = f"{s3_bucket}/corpus/v1.bin"
    storage.write_bytes(uri, b"0123456789" * 1000)
    storage.write_bytes(f"{s3_bucket}/corpus/sub/v2.mp4", b"x")
    assert storage.exists(uri)
    assert storage.list_files(f"{s3_bucket}/corpus") == [f"{s3_bucket}/corpus/sub/v2.mp4", uri]
    assert storage.list_files(f"{s3_bucket}/corpus", (".mp4",)) == [f"{s3_bucket}/corpus/sub/v2.mp4"]
    with storage.open_input(uri, block_size=1024) as f:
        f.seek(5000)
        assert f.read(4) == b"0123"
    storage.check_writable(f"{s3_bucket}/out")
    with pytest.raises(FileNotFoundError):
        storage.list_files(f"{s3_bucket}/nothing-here")


def test_absolute_fixes_user_paths_before_workers_see_them(tmp_path, monkeypatch):
    from workflows.core import storage

    monkeypatch.chdir(tmp_path)
    assert storage.absolute("models/tiny") == str(tmp_path / "models" / "tiny")
    assert storage.absolute("file://out") == str(tmp_path / "out")
    assert storage.absolute("~/x") == str(Path.home() / "x")
    for uri in ("s3://b/p", "models:/m@champion", "runs:/abc/model", "default", "/abs/path"):
        assert storage.absolute(uri) == uri


def test_the_writability_probe_leaves_nothing_behind(tmp_path):
    from workflows.core import storage

    target = tmp_path / "new" / "deeper" / "out"
    storage.check_writable(str(target))
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    storage.check_writable(str(tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
