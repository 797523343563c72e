"""The offline backend on real still images: counts, boxes checked by eye, record contents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.taxonomy import AU_NAMES, FE_BASIC
from workflows.annotate.decode import Frame
from workflows.faces import BLENDSHAPE_NAMES, FaceConfig, FaceExtractor
from workflows.faces.tracking import box_iou

# Boxes drawn on the images and checked by eye (x0, y0, x1, y1).
ASTRONAUT_FACE = (178, 63, 268, 176)
MULTI_FACES = [  # left to right: sunglasses, long hair, curly hair (back), centre, right
    (212, 62, 303, 176), (315, 234, 410, 363), (439, 215, 517, 311), (531, 304, 626, 436), (685, 292, 787, 424),
]


def _frame(image, index=0, t=0.0):
    return Frame(index, t, image)


def test_astronaut_one_face_full_record(extractor, astronaut):
    recs = extractor.process_frame(_frame(astronaut))
    assert len(recs) == 1
    r = recs[0]
    assert box_iou(r.bbox, np.array(ASTRONAUT_FACE)) > 0.8
    assert r.det_score > 0.8
    assert r.bbox.shape == (4,) and r.bbox.dtype == np.float32
    assert r.kps.shape == (5, 2) and r.kps.dtype == np.float32
    # eyes above nose above mouth, image-left eye first
    assert r.kps[0, 0] < r.kps[1, 0] and r.kps[0, 1] < r.kps[2, 1] < r.kps[3, 1]
    assert r.landmarks.shape == (478, 2) and r.landmarks.dtype == np.float32
    assert r.crop.shape == (224, 224, 3) and r.crop.dtype == np.uint8
    assert r.pose.shape == (3,) and np.all(np.abs(r.pose) < 20)  # frontal portrait
    assert r.blendshapes.shape == (len(BLENDSHAPE_NAMES),) == (52,)
    assert r.au_evidence.shape == r.au_evidence_raw.shape == (len(AU_NAMES),)
    finite = r.au_evidence_raw[np.isfinite(r.au_evidence_raw)]
    assert finite.min() >= 0 and finite.max() <= 1
    assert np.isnan(r.au_evidence_raw[AU_NAMES.index("AU23")])  # no cue for it: NaN, not 0
    assert np.isnan(r.au_evidence_raw[AU_NAMES.index("AU09")])  # geometry AU09 is opt-in
    assert r.fe_prior.shape == (7,) and abs(float(r.fe_prior.sum()) - 1) < 1e-4
    assert FE_BASIC[int(np.argmax(r.fe_prior))] == "happiness"  # she smiles
    assert r.au_evidence_raw[AU_NAMES.index("AU12")] > 0.6
    assert r.gender == "female" and 0.5 < r.gender_score <= 1
    assert 25 < r.age < 55  # Eileen Collins was ~36
    assert r.embedding is None  # the offline stack has no identity model
    assert r.flags == []
    assert r.track_id == -1  # tracks are assigned per video


def test_multi_face_five_faces_at_eye_checked_boxes(extractor, multi_face):
    recs = extractor.process_frame(_frame(multi_face))
    assert len(recs) == 5
    for expected in MULTI_FACES:
        best = max(box_iou(r.bbox, np.array(expected, np.float32)) for r in recs)
        assert best > 0.7, expected
    assert all(r.landmarks is not None and r.landmarks.shape == (478, 2) for r in recs)
    assert sorted(r.gender for r in recs) == ["female", "female", "female", "male", "male"]


def test_posed_happy_ranks_happiness_first(extractor, posed):
    recs = extractor.process_frame(_frame(posed("happy")))
    assert len(recs) == 1
    order = [FE_BASIC[i] for i in np.argsort(-recs[0].fe_prior)]
    assert order[0] == "happiness"


def test_posed_surprise_reads_brows_and_jaw(extractor, posed):
    (r,) = extractor.process_frame(_frame(posed("surprise")))
    assert FE_BASIC[int(np.argmax(r.fe_prior))] == "surprise"
    au = dict(zip(AU_NAMES, r.au_evidence_raw, strict=True))
    assert au["AU26"] > 0.3 and au["AU01"] > 0.3 and au["AU25"] > 0.5 and au["AU12"] < 0.1


def test_profile_pose_is_measured(extractor, posed):
    (r,) = extractor.process_frame(_frame(posed("disgust")))  # head turned ~40° to image-left
    assert -50 < r.pose[0] < -25
    (m,) = extractor.process_frame(_frame(np.ascontiguousarray(posed("disgust")[:, ::-1])))
    assert 25 < m.pose[0] < 50


@pytest.mark.parametrize("make", [
    lambda a: np.zeros((360, 640, 3), np.uint8),  # black frame
    lambda a: np.full((200, 200, 3), 255, np.uint8),  # white frame
    lambda a: np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8),  # noise
    lambda a: a[:10, :10],  # tiny image
    lambda a: a[:1, :1],
    lambda a: np.zeros((0, 0, 3), np.uint8),
], ids=["black", "white", "noise", "10px", "1px", "empty"])
def test_faceless_frames_give_nothing(extractor, astronaut, make):
    assert extractor.process_frame(_frame(make(astronaut))) == []


def test_grayscale_rgba_float_inputs(extractor, astronaut):
    import cv2

    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    for image in (grey, grey[:, :, None], np.dstack([astronaut, np.full(grey.shape, 255, np.uint8)]),
                  astronaut.astype(np.float32) / 255):
        recs = extractor.process_frame(_frame(image))
        assert len(recs) == 1 and box_iou(recs[0].bbox, np.array(ASTRONAUT_FACE)) > 0.8
        assert recs[0].crop.shape == (224, 224, 3)


def test_dark_border_and_tiny_faces_are_flagged(extractor, astronaut, multi_face):
    import cv2

    (dark,) = extractor.process_frame(_frame((astronaut * 0.12).astype(np.uint8)))
    assert "dark" in dark.flags
    (cut,) = extractor.process_frame(_frame(np.ascontiguousarray(astronaut[:, 215:])))  # face cut at the left
    assert "border" in cut.flags
    small = cv2.resize(multi_face, (250, 167), interpolation=cv2.INTER_AREA)  # faces ~25 px
    recs = extractor.process_frame(_frame(small))
    assert len(recs) >= 4 and all("tiny" in r.flags for r in recs)


def test_no_landmarks_means_nan_aus_not_zeros(extractor, astronaut):
    # A face whose upper half is outside the frame: the detector still finds the chin and
    # mouth, MediaPipe does not; the record is kept, flagged, and carries no AU numbers.
    recs = extractor.process_frame(_frame(np.ascontiguousarray(astronaut[110:])))
    assert len(recs) == 1
    r = recs[0]
    assert "no_landmarks" in r.flags and r.blendshapes is None and r.landmarks is None
    assert np.isnan(r.au_evidence_raw).all() and np.isnan(r.pose).all()
    assert r.fe_prior is not None and r.age is not None  # the other models still ran


def test_switches_crop_size_and_attributes_off(astronaut):
    cfg = FaceConfig(crop_size=112, attributes=False, expression=False, landmarks=False)
    with FaceExtractor(cfg) as ex:
        (r,) = ex.process_frame(_frame(astronaut))
    assert r.crop.shape == (112, 112, 3)
    assert r.age is None and r.gender is None and r.gender_score is None and r.fe_prior is None
    assert r.landmarks is None and r.blendshapes is None and np.isnan(r.au_evidence_raw).all()
    assert "no_landmarks" not in r.flags  # not asked for, so not missing


def test_crop_is_aligned_on_the_template(extractor, astronaut):
    import cv2

    rot = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((223, 120), 25, 1.0), (512, 512))
    (r,) = extractor.process_frame(_frame(rot))
    (ref,) = extractor.process_frame(_frame(astronaut))
    assert 15 < r.pose[2] < 35  # roll follows the 25° counter-clockwise rotation
    # alignment undoes the rotation: the two crops show the face the same way up
    a, b = (x.crop[40:184, 40:184].astype(np.float32).ravel() for x in (r, ref))
    assert np.corrcoef(a, b)[0, 1] > 0.9
    unaligned = cv2.resize(rot[63:176, 178:268], (224, 224))[40:184, 40:184].astype(np.float32).ravel()
    assert np.corrcoef(unaligned, b)[0, 1] < 0.8


def test_record_bytes_are_crop_dominated(extractor, astronaut):
    (r,) = extractor.process_frame(_frame(astronaut))
    assert 150_528 <= r.nbytes() < 160_000  # 224²x3 crop + ~4 KB of landmarks and small arrays


def test_a_failing_model_flags_the_face_and_a_failing_detector_skips_the_frame(extractor, astronaut, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(extractor._attrs, "estimate", boom)
    monkeypatch.setattr(extractor._fer, "predict", boom)
    monkeypatch.setattr(extractor._mesh, "run", boom)
    (r,) = extractor.process_frame(_frame(astronaut))
    assert {"attributes_error", "expression_error", "landmarks_error"} <= set(r.flags)
    assert r.age is None and r.fe_prior is None and np.isnan(r.au_evidence_raw).all()
    assert r.crop.shape == (224, 224, 3)
    monkeypatch.setattr(extractor._detector, "detect", boom)
    recs = extractor.process_video([_frame(astronaut, 0, 0.0), _frame(astronaut, 1, 0.5)])
    assert recs == [] and extractor.video_stats["frames_detector_error"] == 2


def test_an_extractor_left_open_exits_quietly():
    """A Ray actor exits without closing its extractor; MediaPipe's own finaliser would then
    print a traceback into the job's log at every exit. The process must exit silently."""
    import subprocess
    import sys

    code = ("from workflows.faces import FaceConfig, FaceExtractor\n"
            "x = FaceExtractor(FaceConfig())\n"
            "print('loaded')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-2000:]


def test_detection_scale_follows_the_smallest_face_asked_for():
    from workflows.faces.detect import detect_scale

    assert detect_scale(720, 1280, 1280, 24) == 0.5  # 720p detected at 640
    assert detect_scale(1080, 1920, 1280, 24) == 0.5  # 1080p at 960
    assert detect_scale(2160, 3840, 1280, 24) == 1280 / 3840  # the cap wins on 4K
    assert detect_scale(360, 640, 1280, 24) == 1.0  # small frames stay as they are
    assert detect_scale(720, 1280, 1280, 0) == 1.0  # off: only the cap applies
    assert detect_scale(1080, 1920, 0, 12) == 1.0  # 12 px faces need the native frame


@pytest.mark.parametrize("size", [(640, 360), (1280, 720)])
def test_yunet_sees_the_frame_as_bgr_at_its_detection_scale(multi_face, size):
    """Detections are exactly those of OpenCV's YuNet on the BGR frame, area-resized to the detection
    scale (the face stage's outputs must not move when this preprocessing is made cheaper)."""
    import cv2

    from workflows.core import assets
    from workflows.faces.detect import YuNetDetector, detect_scale

    w, h = size
    frame = np.ascontiguousarray(cv2.resize(multi_face, size, interpolation=cv2.INTER_AREA))
    scale = detect_scale(h, w, 1280, 24)
    ref = np.ascontiguousarray(frame[:, :, ::-1])
    if scale != 1.0:
        ref = cv2.resize(ref, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    yunet = cv2.FaceDetectorYN.create(str(assets.resolve("yunet")), "", ref.shape[1::-1], 0.6, 0.3, 5000)
    _, rows = yunet.detect(ref)
    got = YuNetDetector(assets.resolve("yunet"), 0.6, 0.3, 1280, 24).detect(frame)
    assert len(got) == len(rows) >= 4
    rows = rows[np.argsort(-rows[:, 14], kind="stable")]
    for d, row in zip(got, rows, strict=True):
        assert d.score == float(row[14])  # the same pixels in, the same score out
        np.testing.assert_allclose(d.bbox, np.r_[row[:2], row[:2] + row[2:4]] / scale, rtol=0, atol=1e-3)
        np.testing.assert_allclose(d.kps, row[4:14].reshape(5, 2) / scale, rtol=0, atol=1e-3)


@pytest.mark.parametrize("face_px,min_face,found", [(28, 24, True), (16, 24, False), (16, 12, True)])
def test_faces_down_to_det_min_face_px_are_all_found_on_hd_frames(multi_face, face_px, min_face, found):
    """Real faces tiled over a 1280x720 frame: the default (24 px) finds every face of 28 px
    while detecting at half size; 16 px faces need det_min_face_px=12 (the native frame)."""
    from bench.bench_detect import recall, tiled
    from workflows.core import assets
    from workflows.faces.detect import YuNetDetector

    det = YuNetDetector(assets.resolve("yunet"), max_side=1280, min_face_px=min_face)
    boxes = np.array([d.bbox for d in YuNetDetector(assets.resolve("yunet"), max_side=0).detect(multi_face)])
    canvas, gt = tiled(multi_face, boxes, face_px, 1280, 720)
    r = recall(det.detect(canvas), gt)
    assert (r == 1.0) if found else (r < 0.6), r


@pytest.fixture(scope="module")
def facex_pair():
    from workflows.core import assets
    from workflows.faces.expression import FacexClassifier

    path = assets.resolve("facex_tflite")
    return FacexClassifier(path), FacexClassifier(path, float32=False)


def test_facex_float32_rewrite_agrees_with_the_shipped_model_on_real_faces(facex_pair, posed, extractor):
    fast, shipped = facex_pair
    assert fast.float32 and not shipped.float32
    for name in ("happy", "surprise", "anger", "disgust"):
        image = posed(name)
        (rec,) = extractor.process_frame(_frame(image))
        a = fast.predict(image, rec.bbox, rec.landmarks)
        b = shipped.predict(image, rec.bbox, rec.landmarks)
        assert int(a.argmax()) == int(b.argmax()), (name, a, b)
        assert float(np.abs(a - b).max()) < 0.05, (name, a, b)


def test_facex_float32_rewrite_leaves_no_8bit_weights_or_dequantize_ops():
    from ai_edge_litert import schema_py_generated as tfl

    from workflows.core import assets
    from workflows.faces.expression import float_weights

    shipped = Path(assets.resolve("facex_tflite")).read_bytes()

    def ops(model: bytes) -> tuple[list[int], list]:
        m = tfl.ModelT.InitFromPackedBuf(model, 0)
        g = m.subgraphs[0]
        codes = [max(m.operatorCodes[op.opcodeIndex].builtinCode, m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
                 for op in g.operators]
        return codes, [g.tensors[i] for op in g.operators for i in op.inputs[1:] if i >= 0]

    before, _ = ops(shipped)
    after, weights = ops(float_weights(shipped))
    assert before.count(tfl.BuiltinOperator.DEQUANTIZE) == 15
    assert tfl.BuiltinOperator.DEQUANTIZE not in after and len(after) == len(before) - 15
    eight_bit = (tfl.TensorType.UINT8, tfl.TensorType.INT8)
    assert len(weights) > 50 and not [t.name for t in weights if t.type in eight_bit]


def test_facex_falls_back_to_the_shipped_model_when_the_rewrite_fails(monkeypatch, caplog):
    from workflows.core import assets
    from workflows.faces import expression

    def broken(model: bytes) -> bytes:
        raise ValueError("unsupported layout")

    monkeypatch.setattr(expression, "float_weights", broken)
    clf = expression.FacexClassifier(assets.resolve("facex_tflite"))
    assert not clf.float32 and "as shipped (unsupported layout)" in caplog.text
    p = clf.predict(np.full((240, 240, 3), 128, np.uint8), np.array([40, 40, 200, 200], np.float32), None)
    assert p.shape == (7,) and abs(float(p.sum()) - 1) < 1e-5
