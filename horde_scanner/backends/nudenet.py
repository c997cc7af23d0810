"""NudeNet's nudity detector on onnxruntime (extra [prescreen]), without OpenCV.

The model is the ONNX file shipped inside the `nudenet` wheel (found without importing the
package, which would pull in OpenCV). Pre-processing follows NudeNet's own: pad the image to a
square at the bottom/right with black, resize to the model's resolution, RGB scaled to 0-1,
NCHW. (RGB as in NudeNet 3.0 and the YOLOv8 training; 3.4's reader swaps channels twice and so
feeds BGR from files, which we do not copy.) The output is YOLOv8-style, (batch, 4 + classes,
anchors); each anchor counts for its best class only, as in NudeNet's post-processing, and a
class's score is its best anchor's.
Boxes are not needed to decide "nothing exposed", so there is no NMS.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from horde_scanner.errors import FinalError


class DetectorUnavailable(FinalError):
    """The detector cannot be loaded (extra not installed, model missing or not NudeNet's)."""


def nudenet_classes() -> list[str]:
    text = resources.files("horde_scanner.data").joinpath("nudenet_classes.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            "the pre-screen needs NudeNet's model: pip install 'horde-scanner[prescreen]' "
            "(or set prescreen.model_path to a NudeNet ONNX file)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "320n.onnx"
        if path.is_file():
            return path
    raise DetectorUnavailable("the installed nudenet package ships no 320n.onnx model")


class NudityDetector:
    """Thread-safe: onnxruntime sessions may run from several threads at once."""

    def __init__(self, model_path: Path | None = None, resolution: int = 320) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DetectorUnavailable(
                "the pre-screen needs onnxruntime: pip install 'horde-scanner[prescreen]'"
            ) from None
        path = Path(model_path) if model_path else bundled_model_path()
        if not path.is_file():
            raise DetectorUnavailable(f"prescreen.model_path {path}: no such file")
        options = ort.SessionOptions()
        # One core per call; parallelism comes from the bounded executor running several.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise DetectorUnavailable(f"cannot load pre-screen model {path}: {exc}") from None
        self.classes = nudenet_classes()
        self.model_path = path
        self.resolution = resolution
        self._input = self._session.get_inputs()[0].name
        probe = self._run(np.zeros((1, 3, resolution, resolution), np.float32))
        if probe.shape[1] != 4 + len(self.classes):
            raise DetectorUnavailable(
                f"{path}: output has {probe.shape[1] - 4} classes, NudeNet's has "
                f"{len(self.classes)}"
            )

    def _run(self, blob: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {self._input: blob})[0]
        return np.asarray(out)

    def blob(self, image: Image.Image) -> np.ndarray:
        size = self.resolution
        scale = size / max(image.width, image.height)
        w = max(1, round(image.width * scale))
        h = max(1, round(image.height * scale))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), (0, 0))
        pixels = np.asarray(canvas, dtype=np.float32) * (1.0 / 255.0)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])

    def scores(self, image: Image.Image) -> dict[str, float]:
        """Best score per class (0 when no anchor picks it). Blocking: run in a thread."""
        out = self._run(self.blob(image))[0, 4:, :]  # (classes, anchors)
        best_class = out.argmax(axis=0)
        best_score = out.max(axis=0)
        per_class = np.zeros(len(self.classes), np.float32)
        np.maximum.at(per_class, best_class, best_score)
        return {c: float(s) for c, s in zip(self.classes, per_class, strict=True)}
