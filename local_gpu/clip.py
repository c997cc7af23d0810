"""CLIP scoring with transformers: image embeddings against cached phrase embeddings.

Loading takes a hub name (resolved through the Hugging Face cache, downloaded unless offline)
or a directory written by `save_pretrained` (model + tokenizer). Images are pre-processed here
with Pillow and numpy, the way CLIP's own processor does (shortest side resized with bicubic,
centre crop, mean/std normalisation; values from the model's preprocessor_config.json when it
has one), so no torchvision and no "fast" processor is needed.

Everything here blocks: the backend calls it from one dedicated thread.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from horde_scanner.errors import FinalError

log = logging.getLogger(__name__)

# OpenAI CLIP's normalisation, used when the model brings no preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelUnavailable(FinalError):
    """The CLIP model cannot be loaded; the message says what to install or configure."""


@dataclass(frozen=True)
class Preprocess:
    resize: int  # shortest side
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def pixels(self, images: list[Image.Image]) -> np.ndarray:
        out = np.empty((len(images), 3, self.crop, self.crop), np.float32)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        for i, image in enumerate(images):
            image = image.convert("RGB")
            scale = self.resize / min(image.width, image.height)
            w = max(self.crop, round(image.width * scale))
            h = max(self.crop, round(image.height * scale))
            image = image.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
            arr = np.asarray(image, np.float32).transpose(2, 0, 1) * (1.0 / 255.0)
            out[i] = (arr - mean) / std
        return out


def _size_value(value: Any, default: int) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if isinstance(value.get(key), int):
                return int(value[key])
    return default


def read_preprocess(config_json: dict[str, Any] | None, image_size: int) -> Preprocess:
    cfg = config_json or {}
    mean = tuple(cfg.get("image_mean") or _CLIP_MEAN)
    std = tuple(cfg.get("image_std") or _CLIP_STD)
    return Preprocess(
        resize=_size_value(cfg.get("size"), image_size),
        crop=_size_value(cfg.get("crop_size"), image_size),
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
    )


class ClipScorer:
    def __init__(
        self, model: Any, tokenizer: Any, preprocess: Preprocess, device: str, dtype: Any, name: str
    ) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype
        self.name = name
        self._text_cache: dict[str, Any] = {}  # phrase -> normalised embedding (1-D, float32)
        self._phrases: tuple[str, ...] = ()
        self._matrix: Any = None
        self.memory = self._memory_report()

    @classmethod
    def load(
        cls,
        *,
        model: str = "openai/clip-vit-large-patch14",
        model_dir: Path | None = None,
        cache_dir: Path | None = None,
        offline: bool = False,
        device: str = "auto",
        fp16: bool = True,
    ) -> ClipScorer:
        try:
            import torch
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as exc:
            raise ModelUnavailable(
                f"local CLIP needs torch and transformers ({exc.name} is missing): "
                "pip install -c constraints.txt 'horde-scanner[gpu]'"
            ) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelUnavailable(f"local.device={device} but torch sees no CUDA GPU")
        source = str(model_dir) if model_dir is not None else model
        if model_dir is not None and not Path(model_dir).is_dir():
            raise ModelUnavailable(f"local.model_dir {model_dir}: not a directory")
        kwargs: dict[str, Any] = {"local_files_only": offline or model_dir is not None}
        if cache_dir is not None:
            kwargs["cache_dir"] = str(cache_dir)
        started = time.monotonic()
        try:
            clip = CLIPModel.from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            hint = (
                ""
                if model_dir is not None
                else " (not in the Hugging Face cache and not downloadable: set local.model_dir to "
                "a directory with the model, or unset local.offline)"
            )
            raise ModelUnavailable(f"cannot load CLIP model {source}: {exc}{hint}") from None
        dtype = torch.float16 if fp16 and device.startswith("cuda") else torch.float32
        clip = clip.to(device=device, dtype=dtype).eval()  # type: ignore[call-arg]
        preprocess = read_preprocess(
            _preprocessor_config(source, kwargs), int(clip.config.vision_config.image_size)
        )
        scorer = cls(clip, tokenizer, preprocess, device, dtype, source)
        log.info(
            "CLIP %s loaded on %s (%s) in %.1f s; %s",
            source,
            device,
            str(dtype).removeprefix("torch."),
            time.monotonic() - started,
            scorer.memory,
        )
        return scorer

    def _memory_report(self) -> str:
        torch = self._torch
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        report = f"weights {params / 2**20:.0f} MiB"
        if self.device.startswith("cuda"):
            index = torch.device(self.device).index or 0
            free, total = torch.cuda.mem_get_info(index)
            used = torch.cuda.memory_allocated(index)
            report += (
                f"; GPU {torch.cuda.get_device_name(index)}: {used / 2**30:.2f} GiB allocated "
                f"by us, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
            )
        return report

    @staticmethod
    def _features(output: Any) -> Any:
        # transformers 4.x returns a tensor, 5.x an output object with the projection pooled.
        return output if hasattr(output, "norm") else output.pooler_output

    def set_phrases(self, phrases: list[str]) -> None:
        """Embed (once each) the phrases every image is scored against."""
        torch = self._torch
        new = [p for p in dict.fromkeys(phrases) if p not in self._text_cache]
        if new:
            enc = self.tokenizer(new, padding=True, truncation=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                feats = self._features(self.model.get_text_features(**enc)).float()
            feats = torch.nn.functional.normalize(feats, dim=-1).cpu()
            for phrase, vec in zip(new, feats, strict=True):
                self._text_cache[phrase] = vec
        self._phrases = tuple(dict.fromkeys(phrases))
        if self._phrases:
            self._matrix = torch.stack([self._text_cache[p] for p in self._phrases]).to(self.device)
        else:
            self._matrix = None

    @property
    def phrases(self) -> tuple[str, ...]:
        return self._phrases

    @property
    def text_embeddings_computed(self) -> int:
        return len(self._text_cache)

    def image_embeddings(self, images: list[Image.Image]) -> Any:
        torch = self._torch
        pixels = torch.from_numpy(self.preprocess.pixels(images)).to(self.device, self.dtype)
        with torch.inference_mode():
            feats = self._features(self.model.get_image_features(pixel_values=pixels)).float()
        return torch.nn.functional.normalize(feats, dim=-1)

    def score(self, images: list[Image.Image]) -> list[dict[str, float]]:
        """Cosine similarity of each image with each phrase."""
        if not images:
            return []
        if self._matrix is None:
            raise ValueError("no phrases set")
        sims = (self.image_embeddings(images) @ self._matrix.T).cpu().numpy()
        return [
            {p: round(float(s), 5) for p, s in zip(self._phrases, row, strict=True)} for row in sims
        ]


def _preprocessor_config(source: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from transformers.utils import cached_file

            found = cached_file(
                source,
                "preprocessor_config.json",
                _raise_exceptions_for_missing_entries=False,
                **kwargs,
            )
        except (OSError, ValueError, TypeError):
            found = None
        if not found:
            return None
        path = Path(found)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
