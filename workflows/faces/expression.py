"""Facial-expression prior from ``facex`` 1.1.0's classifier (MIT, 2.6 MB tflite, LiteRT).

Input: 200x200x3 float32 in [0, 1], a grey face repeated over three channels. The model was
trained on Haar-cascade-style crops, so the crop is rebuilt that way: a square 1.3x the width
of the MediaPipe landmark box, centred 0.1 landmark-box heights above that box's centre (a
tight landmark box turns neutral faces into "sadness"). Without landmarks the landmark box is
estimated from the detector box (measured here: same width, top edge 0.1 box heights lower).
Output: softmax over anger, disgust, fear, happy, neutral, sadness, surprised, remapped to
``FE_BASIC`` order.

The shipped file is weight-quantized: 33 convolutions and the classifier read 8-bit weights
through "hybrid" kernels, and 15 DEQUANTIZE ops expand the depthwise weights at every call.
XNNPACK runs none of those, so the graph fell apart into 16 delegate partitions. By default
the weights are expanded to float32 once at load (:func:`float_weights`): XNNPACK then runs
the whole network, 2.9x faster on one core, and the outputs are those of the float network
on the same quantized weights (the hybrid kernels also quantize activations to 8 bits; the
two differ by about 0.02 in probability). Load checks the rewrite against the file as shipped
on a probe input and falls back to the file if they disagree.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from model.taxonomy import FE_BASIC
from workflows.faces import align

FACEX_CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
# FE_BASIC position i takes facex output FACEX_TO_BASIC[i].
FACEX_TO_BASIC = np.array([FACEX_CLASSES.index(c) for c in FE_BASIC])
INPUT_SIZE = 200
# Largest probability difference accepted between the float32 rewrite and the file as shipped
# on the load-time probe (measured: about 0.02; a wrong rewrite is off by up to 1).
REWRITE_TOLERANCE = 0.1

log = logging.getLogger(__name__)


def float_weights(model: bytes) -> bytes:
    """The TFLite flatbuffer ``model`` with every constant 8-bit weight tensor stored as float32:
    DEQUANTIZE ops on constants are folded into float constants, and the 8-bit weights of
    hybrid ops (float activations, 8-bit weights) are dequantized in place. Hybrid kernels read
    their weights as int8 whatever the declared type, DEQUANTIZE reads its declared type; both
    apply the tensor's scale and zero point (per channel where given)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    m = tfl.ModelT.InitFromPackedBuf(model, 0)
    g = m.subgraphs[0]
    eight_bit = (tfl.TensorType.UINT8, tfl.TensorType.INT8)

    def constant(t: tfl.TensorT) -> np.ndarray | None:
        data = m.buffers[t.buffer].data if t.buffer < len(m.buffers) else None
        return None if data is None or not len(data) else np.asarray(data, np.uint8)

    def dequantized(t: tfl.TensorT, signed: bool) -> np.ndarray:
        raw = constant(t)
        if t.type == tfl.TensorType.FLOAT16:
            return raw.view(np.float16).reshape(t.shape).astype(np.float32)
        q = raw.view(np.int8 if signed else np.uint8).reshape(t.shape).astype(np.float32)
        qp = t.quantization
        scale = np.asarray(qp.scale, np.float32)
        zero = np.asarray(qp.zeroPoint if qp.zeroPoint is not None else [0], np.float32)
        if scale.size > 1:
            shape = [1] * q.ndim
            shape[qp.quantizedDimension] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
        return (q - zero) * scale

    def store(t: tfl.TensorT, values: np.ndarray) -> None:
        b = tfl.BufferT()
        b.data = np.frombuffer(values.astype(np.float32).tobytes(), np.uint8)
        m.buffers.append(b)
        t.buffer, t.type, t.quantization = len(m.buffers) - 1, tfl.TensorType.FLOAT32, None

    dequantize = {i for i, c in enumerate(m.operatorCodes)
                  if max(c.builtinCode, c.deprecatedBuiltinCode) == tfl.BuiltinOperator.DEQUANTIZE}
    kept = []
    for op in g.operators:
        src = g.tensors[op.inputs[0]]
        if op.opcodeIndex in dequantize and constant(src) is not None:
            store(g.tensors[op.outputs[0]], dequantized(src, signed=src.type == tfl.TensorType.INT8))
            continue
        kept.append(op)
    g.operators = kept
    for op in g.operators:
        for i in op.inputs:
            t = g.tensors[i] if i >= 0 else None
            if t is not None and t.type in eight_bit and constant(t) is not None:
                store(t, dequantized(t, signed=True))
    b = flatbuffers.Builder(len(model) * 6)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def facex_region(bbox: np.ndarray, mesh_xy: np.ndarray | None) -> tuple[float, float, float]:
    """``(cx, cy, side)`` in source px of the square the classifier sees."""
    if mesh_xy is not None:
        x0, y0 = mesh_xy.min(0)
        x1, y1 = mesh_xy.max(0)
    else:
        x0, y0, x1, y1 = (float(v) for v in bbox)
        y0 = y0 + 0.1 * (y1 - y0)
    w, h = float(x1 - x0), float(y1 - y0)
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0 - 0.1 * h, 1.3 * w


class FacexClassifier:
    """The facex expression network on CPU (ai_edge_litert)."""

    def __init__(self, model_path: str | Path, num_threads: int = 1, float32: bool = True):
        shipped = Path(model_path).read_bytes()
        self.float32 = False
        self._it = self._interpreter(shipped, num_threads)
        if float32:
            try:
                it = self._interpreter(float_weights(shipped), num_threads)
                probe = np.random.default_rng(0).random((1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
                diff = float(np.abs(self._invoke(it, probe) - self._invoke(self._it, probe)).max())
                if diff > REWRITE_TOLERANCE:
                    raise ValueError(f"float32 rewrite differs from the shipped model by {diff:.3f}")
                self._it, self.float32 = it, True
            except Exception as e:  # noqa: BLE001 - the shipped file still works, only slower
                log.warning("facex: running the weight-quantized model as shipped (%s)", e)

    @staticmethod
    def _interpreter(content: bytes, num_threads: int):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=content, num_threads=num_threads)
        it.allocate_tensors()
        return it

    @staticmethod
    def _invoke(it, x: np.ndarray) -> np.ndarray:
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return np.asarray(it.get_tensor(it.get_output_details()[0]["index"])[0], np.float32)

    def predict(self, image: np.ndarray, bbox: np.ndarray, mesh_xy: np.ndarray | None) -> np.ndarray:
        """(7,) float32 FE probabilities in ``FE_BASIC`` order for one face of an RGB image."""
        import cv2

        cx, cy, side = facex_region(bbox, mesh_xy)
        chip, _ = align.square_crop(image, cx, cy, side, INPUT_SIZE)
        grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY).astype(np.float32) / np.float32(255.0)
        # the grey face on three channels: cvtColor copies it 5x faster than np.repeat (same values)
        p = self._invoke(self._it, cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)[None])[FACEX_TO_BASIC]
        return p / max(float(p.sum()), 1e-12)
