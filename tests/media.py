"""Test media rendered at test time with PyAV: frames carry their own index as a bit pattern."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

BITS = 12
BLOCK = 16


def frame_with_index(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame whose top-left row of 16 px blocks spells ``index`` in binary."""
    img = np.full((height, width, 3), 60, np.uint8)
    img[:, :, 1] = (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8)[None, :]
    for b in range(BITS):
        if (index >> b) & 1:
            img[0:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255
        else:
            img[0:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 0
    return img


def read_index(image: np.ndarray) -> int:
    """Inverse of :func:`frame_with_index` (robust to compression)."""
    value = 0
    for b in range(BITS):
        block = image[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2]
        if block.mean() > 128:
            value |= 1 << b
    return value


def render_video(path: str | Path, n_frames: int = 30, fps: int = 10, width: int = 256, height: int = 144,
                 gop: int | None = None, rotation: int | None = None, codec: str = "libx264",
                 pts_seconds: list[float] | None = None) -> Path:
    """Write an H.264 video whose frame i shows ``i``; ``pts_seconds`` makes it VFR."""
    import av

    path = Path(path)
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.time_base = tb
        s.codec_context.time_base = tb
        if gop:
            s.codec_context.gop_size = gop
            s.codec_context.options = {"keyint_min": str(gop), "sc_threshold": "0"}
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "ultrafast"}
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n_frames):
            f = av.VideoFrame.from_ndarray(frame_with_index(i, width, height), format="rgb24")
            t = pts_seconds[i] if pts_seconds is not None else i / fps
            f.pts = int(round(t * 1000))
            f.time_base = tb
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path
