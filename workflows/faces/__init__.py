"""Face extraction: detection, alignment, landmarks, attributes, FE prior, AU evidence, tracks.

    from workflows.faces import FaceConfig, FaceExtractor
    ex = FaceExtractor(FaceConfig())          # models load once here
    records = ex.process_video(frames)        # one video's sampled frames → list[FaceRecord]
    ex.close()

Importing this package is cheap: OpenCV, MediaPipe, onnxruntime and LiteRT load inside the
classes that use them.
"""

from workflows.faces.config import AUConfig, FaceConfig, InsightFaceConfig, TrackConfig
from workflows.faces.landmarks import BLENDSHAPE_NAMES
from workflows.faces.stage import FaceExtractor, FaceRecord

__all__ = ["AUConfig", "BLENDSHAPE_NAMES", "FaceConfig", "FaceExtractor", "FaceRecord", "InsightFaceConfig",
           "TrackConfig"]
