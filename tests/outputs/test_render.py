"""`mien render`: every source frame, source timestamps, overlays inside the boxes only."""

from fractions import Fraction

import numpy as np
import pytest

from tests.media import read_index
from tests.outputs.conftest import TRACKS, mien
from workflows.outputs.render import TrackTimeline, default_max_gap


def _decode(path):
    """(timestamps in seconds, RGB frames) of a video, straight from PyAV."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
    return [t - start for t, _ in frames], [img for _, img in frames]


def _edge(img, box, thickness=2):
    """Pixels along the top edge of ``box`` (where the rectangle is drawn)."""
    x0, y0, x1, _ = (int(v) for v in box)
    return img[y0 - thickness + 1:y0 + thickness, x0 + 5:x1 - 5].astype(np.int16)


@pytest.fixture(scope="module")
def rendered(annotated, tmp_path_factory):
    path = tmp_path_factory.mktemp("render") / "interview.mp4"
    assert mien("render", "--input", annotated.root, "--video", annotated.video_id[:4], "--output", path) == 0
    return path


def test_frames_and_timestamps_match_the_source(annotated, rendered):
    src_t, src = _decode(annotated.video_path)
    out_t, out = _decode(rendered)
    assert len(out) == len(src) == annotated.n_source_frames
    assert out_t == pytest.approx(src_t, abs=1e-6)
    assert [read_index(img) for img in out] == list(range(len(src)))  # frame i shows source frame i
    import av

    with av.open(str(rendered)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and (s.width, s.height) == (320, 240)
        assert s.average_rate == Fraction(10)


def test_overlay_inside_boxes_and_held_until_the_gap(annotated, rendered):
    _, src = _decode(annotated.video_path)
    _, out = _decode(rendered)
    box0, box1 = TRACKS[0][0], TRACKS[1][0]
    for i in (0, 3, 12, 29):  # track 0 is sampled every 0.5 s until 2.5 s: always shown
        assert np.abs(_edge(out[i], box0) - _edge(src[i], box0)).mean() > 40, i
    # Track 1 is sampled at 0, 0.5, 1.0 s; held for 1.5 x 0.5 s after its last sample, then dropped.
    for i, shown in ((0, True), (7, True), (17, True), (18, False), (25, False)):
        diff = np.abs(_edge(out[i], box1) - _edge(src[i], box1)).mean()
        assert (diff > 40) if shown else (diff < 8), (i, diff)
    # Away from boxes, labels and the timecode the picture is the source (up to compression).
    far = (slice(200, 215), slice(150, 185))
    assert np.abs(out[5][far].astype(int) - src[5][far].astype(int)).mean() < 6


def test_timeline_holds_then_drops():
    tl = TrackTimeline([{"timestamp_s": t, "n": k} for k, t in enumerate([0.0, 0.5, 1.0])])
    assert default_max_gap([tl], fps=10) == pytest.approx(0.75)
    assert tl.at(-0.1, 0.75, 1e-3) is None
    assert tl.at(0.49, 0.75, 1e-3)["n"] == 0
    assert tl.at(0.5, 0.75, 1e-3)["n"] == 1
    assert tl.at(1.7, 0.75, 1e-3)["n"] == 2
    assert tl.at(1.8, 0.75, 1e-3) is None


def test_render_refuses_error_and_unknown_videos(annotated, tmp_path, capsys):
    assert mien("render", "--input", annotated.root, "--video", annotated.error_video_id,
                "--output", tmp_path / "x.mp4") == 2
    assert "has no ok annotation: invalid_data" in capsys.readouterr().err
    assert mien("render", "--input", annotated.root, "--video", "nope", "--output", tmp_path / "x.mp4") == 2
    assert "no video 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_render_one_frame_as_an_image(annotated, tmp_path):
    from PIL import Image

    path = tmp_path / "frame.png"
    assert mien("render", "--input", annotated.root, "--video", "interview.mp4", "--output", path) == 0
    with Image.open(path) as im:
        assert im.size == (320, 240)


def test_rotated_source_renders_upright(tmp_path):
    """Boxes are in display (rotated) pixels, as the annotator saw the frames."""
    from tests.media import render_video
    from tests.outputs.conftest import _write

    src = render_video(tmp_path / "phone.mp4", n_frames=6, fps=6, width=160, height=96, rotation=90)
    root = tmp_path / "out"
    face = {"video_id": "e5" + "0" * 18, "frame_index": 0, "timestamp_s": 0.0, "track_id": 0, "segment_id": 0,
            "bbox": [20.0, 40.0, 80.0, 110.0], "det_score": 0.9, "fe_label": "neutral", "fe_confidence": 0.8,
            "au_probs": [("AU25", 0.7)], "au_active": ["AU25"]}
    _write(root, "faces", "p.parquet", [face])
    _write(root, "tracks", "p.parquet", [])
    _write(root, "videos", "p.parquet", [{"video_id": face["video_id"], "video_uri": str(src), "status": "ok"}])
    out = tmp_path / "r.mp4"
    assert mien("render", "--input", root, "--video", "phone.mp4", "--output", out, "--max-gap", "10") == 0
    times, frames = _decode(out)
    assert len(frames) == 6 and frames[0].shape == (160, 96, 3)  # upright: 96 wide, 160 high
    assert times == pytest.approx([i / 6 for i in range(6)], abs=1e-3)


def _one_face_at(root, src, frames, box=(100.0, 40.0, 150.0, 100.0)):
    """An annotate output for ``src`` whose one track is sampled at ``frames`` (10 fps)."""
    from tests.outputs.conftest import _write

    vid = "f6" + "0" * 18
    faces = [{"video_id": vid, "frame_index": i, "timestamp_s": i / 10, "track_id": 0, "segment_id": 0,
              "bbox": list(box), "det_score": 0.9, "fe_label": "happiness", "fe_confidence": 0.9,
              "au_probs": [("AU12", 0.8)], "au_active": ["AU12"]} for i in frames]
    _write(root, "faces", "p.parquet", faces)
    _write(root, "tracks", "p.parquet", [])
    _write(root, "videos", "p.parquet", [{"video_id": vid, "video_uri": str(src), "status": "ok"}])


def test_an_image_of_a_video_shows_the_frame_with_faces_or_the_one_asked_for(tmp_path, capsys):
    """Before: a .png/.jpg output was always the first frame, with no way to pick another."""
    from PIL import Image

    from tests.media import render_video

    src = render_video(tmp_path / "lobby.mp4", n_frames=20, fps=10, width=192, height=128)
    root = tmp_path / "out"
    _one_face_at(root, src, frames=[7, 8, 9])  # nobody in the first frames
    still = tmp_path / "still.png"
    assert mien("render", "--input", root, "--video", "lobby.mp4", "--output", still) == 0
    assert read_index(np.asarray(Image.open(still).convert("RGB"))) == 7
    assert "at 0.700 s: 1 face(s)" in capsys.readouterr().out
    assert mien("render", "--input", root, "--video", "lobby.mp4", "--output", still, "--at", "1.25") == 0
    assert read_index(np.asarray(Image.open(still).convert("RGB"))) == 13  # the first frame at or after 1.25 s
    assert mien("render", "--input", root, "--video", "lobby.mp4", "--output", still, "--at", "9") == 2
    assert "no frame at 9 s; the video is 2.00 s long" in capsys.readouterr().err
    assert mien("render", "--input", root, "--video", "lobby.mp4", "--output", tmp_path / "v.mp4", "--at", "1") == 2
    assert "--at picks the frame of a still image" in capsys.readouterr().err


def test_video_named_by_its_file_name_without_extension(annotated, tmp_path):
    path = tmp_path / "frame.jpg"
    assert mien("render", "--input", annotated.root, "--video", "interview", "--output", path) == 0
    assert path.exists()


def test_rendered_files_follow_the_umask(annotated, tmp_path):
    """Before: 0600 whatever the umask (mkstemp), so a render could not be shared."""
    import os
    import stat
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for name in ("clip.mp4", "frame.png"):
        subprocess.run([sys.executable, "-m", "jobs.cli", "render", "--input", str(annotated.root), "--video",
                        "interview.mp4", "--output", str(tmp_path / name)], cwd=root, check=True, umask=0o002,
                       capture_output=True, env=dict(os.environ))
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o664, name


def test_labels_of_a_group_photo_cover_no_face_and_no_other_label():
    """The five faces of the sample group photo (multi_face.jpg, 1000x667) with labels the size
    draw_faces makes there. Before: each label went right above its box, over its neighbours."""
    from workflows.outputs.render import _overlap, place_labels

    boxes = [(686, 289, 789, 424), (531, 305, 631, 437), (314, 236, 409, 359), (216, 62, 306, 175),
             (434, 219, 514, 314)]
    labels = place_labels(boxes, [(270, 78)] * 5, 1000, 667)
    assert all(0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 667 for x0, y0, x1, y1 in labels)
    for i, label in enumerate(labels):
        assert not any(_overlap(label, b) for b in boxes), (i, label)
        assert not any(_overlap(label, other) for other in labels[i + 1:]), (i, label)
    # Where there is no room at all, the labels still land on the frame (overlapping least).
    crowd = place_labels([(0, 0, 100, 100), (100, 0, 200, 100)], [(150, 40)] * 2, 200, 100)
    assert all(0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 100 for x0, y0, x1, y1 in crowd)
