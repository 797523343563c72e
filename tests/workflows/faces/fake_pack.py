"""A stand-in insightface model pack: ONNX graphs with buffalo_l's input/output signatures.

No real pack can be downloaded here, so the adapter is exercised through the real insightface
2.1 code (model routing by signature, SCRFD anchor decoding + NMS, ``norm_crop`` + ArcFace,
genderage) with small graphs:

- ``det_10g.onnx``: SCRFD layout, fixed 640² input, 9 outputs (scores / box distances /
  keypoint offsets for strides 8, 16, 32 with 2 anchors); constant outputs that place one
  face at a chosen box, so decoding must land exactly there.
- ``w600k_r50.onnx``: ArcFace layout, 112² input → 512-d output (random conv + pooling, so
  the embedding depends on the crop).
- ``genderage.onnx``: 96² input → 3 outputs ``[female, male, age/100]`` (constant).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DET_SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = 2


def _graph_model(nodes, inputs, outputs, inits):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def scrfd_graph(box: tuple[float, float, float, float], kps: np.ndarray, score: float = 0.9):
    """SCRFD-like detector whose output decodes to ``box`` (x0, y0, x1, y1) and ``kps`` (5, 2)
    in 640² detector-input pixels."""
    from onnx import TensorProto, helper, numpy_helper

    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    stride = 32
    col, row = round(cx / stride), round(cy / stride)
    ax, ay = col * stride, row * stride
    w = DET_SIZE // stride
    anchor = (row * w + col) * ANCHORS
    nodes, inits, outputs = [], [], []
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["m"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["m", "zero"], ["z"]))
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    names = {"score": [], "bbox": [], "kps": []}
    for kind, dim in (("score", 1), ("bbox", 4), ("kps", 10)):
        for s in STRIDES:
            n = (DET_SIZE // s) ** 2 * ANCHORS
            val = np.zeros((n, dim), np.float32)
            if s == stride:
                if kind == "score":
                    val[anchor, 0] = score
                elif kind == "bbox":
                    val[anchor] = [(ax - box[0]) / s, (ay - box[1]) / s, (box[2] - ax) / s, (box[3] - ay) / s]
                else:
                    val[anchor] = ((np.asarray(kps) - [ax, ay]) / s).reshape(-1)
            const = f"{kind}_{s}_c"
            inits.append(numpy_helper.from_array(val, const))
            out = f"{kind}_{s}"
            nodes.append(helper.make_node("Add", [const, "z"], [out]))
            names[kind].append(out)
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [n, dim]))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])
    return _graph_model(nodes, [inp], outputs, inits)


def arcface_graph(seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.2, (16, 3, 8, 8)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (512, 16, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input.1", "w1"], ["c1"], strides=[8, 8]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["683"]),
    ]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])
    return _graph_model(nodes, [inp], [out], [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])


def genderage_graph(female: float = 0.1, male: float = 0.9, age_years: float = 35.0):
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["fc1"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((3, 3), np.float32), "w"),
             numpy_helper.from_array(np.array([female, male, age_years / 100.0], np.float32), "b")]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 96, 96])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])
    return _graph_model(nodes, [inp], [out], inits)


def write_pack(directory: Path, image_hw: tuple[int, int], box: tuple[float, float, float, float],
               kps: np.ndarray) -> Path:
    """Write the three graphs into ``directory`` so that on an image of ``image_hw`` (H, W) the
    detector reports ``box``/``kps`` (source pixels)."""
    import onnx

    h, w = image_hw
    # SCRFD letterboxes (scale to fit 640² keeping aspect, top-left) and divides its decoded
    # boxes by new_height / h, so the constants are placed with that same factor.
    scale = DET_SIZE / h if h / w > 1 else int(DET_SIZE * h / w) / h
    det_box = tuple(float(v) * scale for v in box)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(scrfd_graph(det_box, np.asarray(kps, np.float32) * scale), str(directory / "det_10g.onnx"))
    onnx.save(arcface_graph(), str(directory / "w600k_r50.onnx"))
    onnx.save(genderage_graph(), str(directory / "genderage.onnx"))
    return directory
