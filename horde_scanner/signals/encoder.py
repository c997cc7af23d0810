"""An ONNX image encoder (a CLIP-family image tower) run with ONNX Runtime on CPU.

The model file takes `(batch, 3, side, side)` float32 pixels and gives `(batch, dim)`; the
output is L2-normalised here, so a model exported with or without the normalisation gives the
same vectors. Preprocessing is named by `embeddings.preprocess` and travels in list headers,
because the same weights with another transform give other vectors:

    resize224-bicubic-centercrop-clipnorm
      shorter side to 224 (bicubic), centre crop 224 x 224, RGB in [0, 1], minus CLIP's mean
      and over its standard deviation (OpenCLIP's transform for the ViT-B/32 models)

Sessions are thread-safe; parallelism comes from the bounded pool that calls `encode`
(EncoderPool), each run using `intra_op_threads` cores.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from horde_scanner.errors import FinalError
from horde_scanner.signals.vectors import normalised

log = logging.getLogger(__name__)

# OpenAI CLIP's pixel statistics (OpenCLIP uses them for its ViT-B/32 models).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
_PREPROCESS = re.compile(r"^resize(\d+)-(bicubic|bilinear)-centercrop-(clipnorm|none)$")
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class EncoderUnavailable(FinalError):
    """The encoder cannot run (no model file, no onnxruntime, a model of another shape)."""


@dataclass(frozen=True, slots=True)
class Preprocess:
    side: int
    filter: str
    norm: str

    @classmethod
    def parse(cls, name: str) -> Preprocess:
        found = _PREPROCESS.match(name)
        if not found:
            raise ValueError(f"unknown preprocessing {name!r}")
        return cls(int(found.group(1)), found.group(2), found.group(3))

    def pixels(self, image: Image.Image) -> np.ndarray:
        """(3, side, side) float32 input for the model."""
        image = image.convert("RGB")
        w, h = image.size
        scale = self.side / min(w, h)
        size = (max(self.side, round(w * scale)), max(self.side, round(h * scale)))
        image = image.resize(size, _FILTERS[self.filter])
        left = (size[0] - self.side) // 2
        top = (size[1] - self.side) // 2
        image = image.crop((left, top, left + self.side, top + self.side))
        data = np.asarray(image, dtype=np.float32) / 255.0
        if self.norm == "clipnorm":
            data = (data - CLIP_MEAN) / CLIP_STD
        return np.ascontiguousarray(data.transpose(2, 0, 1))


class ImageEncoder:
    """Thread-safe: an onnxruntime session may run from several threads at once."""

    def __init__(
        self, model_path: Path, preprocess: str, dim: int, *, intra_op_threads: int = 1
    ) -> None:
        if not model_path.is_file():
            raise EncoderUnavailable(f"embeddings.model_path {model_path}: no such file")
        try:
            import onnxruntime as ort
        except ImportError:
            raise EncoderUnavailable(
                "embeddings need onnxruntime: pip install 'horde-scanner[embeddings]'"
            ) from None
        self.preprocess = Preprocess.parse(preprocess)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EncoderUnavailable(f"cannot load image encoder {model_path}: {exc}") from None
        self._input = self._session.get_inputs()[0].name
        self.model_path = model_path
        self.dim = dim
        side = self.preprocess.side
        try:
            probe = self._run(np.zeros((1, 3, side, side), np.float32))
        except Exception as exc:
            raise EncoderUnavailable(
                f"{model_path}: does not take (1, 3, {side}, {side}) pixels: {exc}"
            ) from None
        if probe.shape != (1, dim):
            raise EncoderUnavailable(
                f"{model_path}: gives embeddings of shape {tuple(probe.shape)}, "
                f"embeddings.dim says {dim}"
            )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {self._input: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def encode(self, image: Image.Image) -> np.ndarray:
        """The unit embedding of one image (blocking: call from a worker thread)."""
        batch = self.preprocess.pixels(image)[None]
        return normalised(self._run(batch)[0])


class EncoderPool:
    """Runs `encode` on at most `threads` images at once with at most `max_queue` waiting; an
    image beyond that gets no embedding (None) instead of waiting: the embedding is an extra
    signal, and a miss must never queue behind a backlog of encodings."""

    def __init__(self, encoder: ImageEncoder, threads: int, max_queue: int) -> None:
        self.encoder = encoder
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="embed")
        self._limit = threads + max_queue
        self._pending = 0
        self._lock = threading.Lock()
        self.refused = 0

    async def encode(self, image: Image.Image) -> np.ndarray | None:
        with self._lock:
            if self._pending >= self._limit:
                self.refused += 1
                return None
            self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self.encoder.encode, image)
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
