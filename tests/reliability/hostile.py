"""A hostile corpus generated at test time: broken, absurd and malicious media, and the
manifest lines an attacker (or a careless script) would write.

``build_media(dir, face)`` writes the files and returns ``{file name: Expect}``;
``manifest_entries(dir)`` returns the extra manifest lines and the reason each must be
rejected with.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np

from tests.media import render_video

ANY_ERROR = "any-error"  # an error row of any kind, with a message
OK_OR_ERROR = "ok-or-error"  # garbled data may still decode: either is fine, a crash is not


@dataclasses.dataclass(frozen=True)
class Expect:
    status: str  # "ok" | "error" | OK_OR_ERROR
    kinds: tuple[str, ...] = ()  # acceptable error kinds ("error"); empty = any
    size: tuple[int, int] | None = None  # (width, height) of an ok row
    min_faces: int = 0


def ok(size=None, min_faces=0) -> Expect:
    return Expect("ok", size=size, min_faces=min_faces)


def err(*kinds: str) -> Expect:
    return Expect("error", tuple(kinds))


DECODE_FAIL = ("invalid_data", "open_failed", "decode_error", "no_frames", "truncated", "no_video_stream")


# -- building blocks -------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(w: int, h: int, color_type: int = 2) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
            + _png_chunk(b"IEND", b""))


def png_bomb(w: int, h: int) -> bytes:
    """A real, valid greyscale PNG of w x h zero pixels: a few hundred KB that inflate to w*h bytes
    (and 3*w*h once converted to RGB)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(h)]
    parts.append(comp.flush())
    idat = b"".join(parts)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def y4m(w: int | str, h: int | str, payload: int = 64) -> bytes:
    return f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\0" * payload


def ffv1_clip(path: Path, w: int, h: int, n_frames: int = 3) -> Path:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=5)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n_frames):
            f = av.VideoFrame.from_ndarray(np.full((h, w, 3), 40 * i, np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def streamless_mp4(path: Path) -> Path:
    """An MP4 header written for a video stream that never got a sample: FFmpeg sees no stream."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        out.start_encoding()
    return path


def audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        for i in range(5):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def ten_hours_vfr(path: Path) -> Path:
    """Two frames, 10 hours apart: a genuine 10 h duration in the header, a few KB on disk."""
    import av

    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt, s.time_base = 64, 64, "yuv420p", tb
        s.codec_context.time_base = tb
        for t in (0, 36_000_000):
            f = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            f.pts, f.time_base = t, tb
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def claim_ten_hours(mkv: bytes) -> bytes:
    """Rewrite the Matroska Segment Info Duration (element 0x4489, in ms) to 10 hours."""
    data = bytearray(mkv)
    i = data.find(b"\x44\x89")
    size = data[i + 2] & 0x7F
    assert size in (4, 8), size
    data[i + 3:i + 3 + size] = struct.pack(">d" if size == 8 else ">f", 36_000_000.0)
    return bytes(data)


def faststart(src: Path, dst: Path) -> Path:
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream_from_template(inp.streams.video[0])
        for pkt in inp.demux(inp.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = s
                out.mux(pkt)
    return dst


# EXIF orientation -> (PIL transpose that displays the stored image upright, its inverse)
_ORIENT = {2: ("FLIP_LEFT_RIGHT", "FLIP_LEFT_RIGHT"), 3: ("ROTATE_180", "ROTATE_180"),
           4: ("FLIP_TOP_BOTTOM", "FLIP_TOP_BOTTOM"), 5: ("TRANSPOSE", "TRANSPOSE"),
           6: ("ROTATE_270", "ROTATE_90"), 7: ("TRANSVERSE", "TRANSVERSE"), 8: ("ROTATE_90", "ROTATE_270")}


def exif_rotated(path: Path, upright: np.ndarray, orientation: int) -> Path:
    """A JPEG whose pixels are stored turned so that only its EXIF orientation makes it upright."""
    from PIL import Image

    im = Image.fromarray(upright)
    if orientation in _ORIENT:
        im = im.transpose(getattr(Image.Transpose, _ORIENT[orientation][1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=92)
    return path


# -- the corpus ------------------------------------------------------------------------------
def build_media(d: Path, face: np.ndarray) -> dict[str, Expect]:
    """Write the hostile media files into ``d``; returns the expectation for each file name."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    exp: dict[str, Expect] = {}

    def put(name: str, data: bytes, e: Expect) -> None:
        (d / name).write_bytes(data)
        exp[name] = e

    base = render_video(d / "_base.mp4", n_frames=30, fps=10, gop=10)
    base_bytes = base.read_bytes()
    fast = faststart(base, d / "_fast.mp4").read_bytes()
    os.unlink(d / "_base.mp4")
    os.unlink(d / "_fast.mp4")
    put("control_ok.mp4", base_bytes, ok(size=(256, 144)))

    # Truncated and garbled containers.
    for pct in (5, 20, 40, 60, 80, 95):  # moov atom at the end: gone
        put(f"trunc_tail_{pct:02d}.mp4", base_bytes[: len(base_bytes) * pct // 100], err(*DECODE_FAIL))
    for pct in (10, 30, 60, 90):  # moov up front: the header outlives the data
        put(f"trunc_fast_{pct:02d}.mp4", fast[: len(fast) * pct // 100], err(*DECODE_FAIL))
    for seed in range(4):
        b = bytearray(fast)
        r = np.random.default_rng(seed)
        pos = r.integers(len(b) // 10, len(b), 300)
        b_arr = np.frombuffer(bytes(b), np.uint8).copy()
        b_arr[pos] = r.integers(0, 256, len(pos), dtype=np.uint8)
        put(f"garbled_payload_{seed}.mp4", b_arr.tobytes(), Expect(OK_OR_ERROR))
    put("garbled_header.mp4", rng.bytes(64) + fast[64:], Expect(OK_OR_ERROR))
    for ext in ("mp4", "mkv", "webm", "avi", "mov"):
        put(f"random_bytes.{ext}", rng.bytes(50_000), err(*DECODE_FAIL))
    for ext in ("mp4", "mkv", "jpg", "png", "webp"):
        put(f"zero_bytes.{ext}", b"", err("empty_file"))
    put("html_404.mp4", b"<html><body><h1>404 Not Found</h1></body></html>\n" * 20, err(*DECODE_FAIL))
    put("ebml_then_garbage.mkv", b"\x1a\x45\xdf\xa3" + rng.bytes(4000), err(*DECODE_FAIL))
    put("zero_frames.y4m.mkv", b"YUV4MPEG2 W64 H64 F30:1 Ip A1:1 C420jpeg\n", err("no_frames"))
    i = fast.find(b"mdat")
    put("zero_frames_moov_only.mp4", fast[: i + 4], err("no_frames"))  # header: 30 frames; data: none
    streamless_mp4(d / "streamless.mp4")
    exp["streamless.mp4"] = err("no_video_stream", *DECODE_FAIL)
    audio_only(d / "audio_only.mp4")
    exp["audio_only.mp4"] = err("no_video_stream")

    # Headers that lie about duration or size.
    ten_hours_vfr(d / "ten_hours_vfr.mkv")
    exp["ten_hours_vfr.mkv"] = err("too_long")
    mkv = render_video(d / "_base.mkv", n_frames=30, fps=10, gop=10)
    put("ten_hours_header.mkv", claim_ten_hours(mkv.read_bytes()), err("too_long"))
    os.unlink(mkv)
    for name, (w, h) in {"absurd_100000sq.y4m.mkv": (100000, 100000), "absurd_65536x2.y4m.mkv": (65536, 2),
                         "absurd_0x0.y4m.mkv": (0, 0), "absurd_negative.y4m.mkv": (-64, -64),
                         "absurd_9000sq.y4m.mkv": (9000, 9000)}.items():
        put(name, y4m(w, h), err("too_large", "too_small", "invalid_dimensions", *DECODE_FAIL))
    ffv1_clip(d / "tiny_8x8.mkv", 8, 8)
    exp["tiny_8x8.mkv"] = err("too_small")

    # Extreme aspect ratios (legal, faceless) and display rotation.
    ffv1_clip(d / "aspect_2048x16.mkv", 2048, 16)
    exp["aspect_2048x16.mkv"] = ok(size=(2048, 16))
    ffv1_clip(d / "aspect_16x2048.mkv", 16, 2048)
    exp["aspect_16x2048.mkv"] = ok(size=(16, 2048))
    render_video(d / "rotated_90.mp4", n_frames=10, fps=5, rotation=90)
    exp["rotated_90.mp4"] = ok(size=(144, 256))

    # Images: EXIF rotations of a real face (upright only through EXIF), bombs, broken files.
    fh, fw = face.shape[:2]
    for o in range(1, 9):
        exif_rotated(d / f"exif_orient_{o}.jpg", face, o)
        exp[f"exif_orient_{o}.jpg"] = ok(size=(fw, fh), min_faces=1)
    put("bomb_12000sq.png", png_bomb(12000, 12000), err("too_large"))
    put("bomb_header_100000sq.png", png_header_only(100000, 100000), err("too_large"))
    put("png_zero_width.png", png_header_only(0, 100), err("invalid_data", "too_small"))
    put("png_1x1.png", png_header_only(1, 1), err("too_small"))
    good_png = d / "_p.png"
    Image.fromarray(face).save(good_png)
    png = good_png.read_bytes()
    os.unlink(good_png)
    i = png.find(b"IDAT") + 8
    put("png_bad_crc.png", png[:i] + bytes([png[i] ^ 0xFF]) + png[i + 1:], err("invalid_data"))
    jpg = (d / "exif_orient_1.jpg").read_bytes()
    put("jpeg_truncated.jpg", jpg[: len(jpg) // 2], err("invalid_data"))
    put("jpeg_header_only.jpg", jpg[:600], err("invalid_data"))
    Image.fromarray(face).save(d / "_g.gif")
    put("gif_named_jpg.jpg", (d / "_g.gif").read_bytes(), ok(size=(fw, fh)))
    os.unlink(d / "_g.gif")
    put("webp_garbage.webp", b"RIFF\x00\x10\x00\x00WEBPVP8 " + rng.bytes(3000), err("invalid_data"))
    Image.fromarray(np.zeros((16, 8000, 3), np.uint8)).save(d / "aspect_8000x16.png")
    exp["aspect_8000x16.png"] = ok(size=(8000, 16))
    Image.fromarray(np.zeros((8000, 16, 3), np.uint8)).save(d / "aspect_16x8000.png")
    exp["aspect_16x8000.png"] = ok(size=(16, 8000))
    im = Image.fromarray(face)
    exif = Image.Exif()
    exif[0x0112] = 9  # out of range
    im.save(d / "exif_orient_invalid.jpg", exif=exif)
    exp["exif_orient_invalid.jpg"] = ok(size=(fw, fh), min_faces=1)
    b = bytearray(jpg)
    app1 = b.find(b"Exif\x00\x00")
    b[app1 + 6:app1 + 40] = rng.bytes(34)  # garbled TIFF header inside the EXIF block
    put("exif_garbled.jpg", bytes(b), Expect(OK_OR_ERROR))
    return exp


def manifest_entries(d: Path, outside: Path) -> dict[str, str]:
    """Hostile manifest lines (str, or bytes for undecodable ones) -> part of the rejection reason.

    ``d`` is the manifest's directory; ``outside`` a directory next to it holding a real video."""
    os.symlink("/etc/passwd", d / "link_passwd.mp4")
    os.symlink(outside / "secret.mp4", d / "link_outside.mp4")
    return {
        "../../etc/passwd": "escapes the manifest's directory",
        "../../../../../../etc/shadow.mp4": "escapes the manifest's directory",
        "sub/../../outside/secret.mp4": "escapes the manifest's directory",
        "file:///etc/passwd.mp4": "outside the allowed roots",
        f"file://{outside}/secret.mp4": "outside the allowed roots",
        "file:///etc/../etc/hostname.mp4": "outside the allowed roots",
        "link_passwd.mp4": "escapes the manifest's directory through a symlink",
        "link_outside.mp4": "escapes the manifest's directory through a symlink",
        "/etc/passwd": "not a supported media suffix",
        "http://169.254.169.254/latest/meta-data/iam/x.mp4": "unsupported scheme 'http'",
        "ftp://example.com/v.mp4": "unsupported scheme 'ftp'",
        "bad\x00nul.mp4": "NUL byte",
        "": "empty uri",
        "control_ok.mp4": "duplicate entry",
    }


NON_UTF8_ENTRY = b"caf\xe9_latin1.mp4"  # a Latin-1 name in a UTF-8 manifest
