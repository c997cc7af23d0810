"""Writing an image encoder as the ONNX file embeddings.model_path points at.

`export_encoder` takes any torch module mapping (batch, 3, side, side) pixels to (batch, dim)
embeddings; `export_openclip` loads OpenCLIP's weights (the extra [export]: torch and
open_clip, on a machine that may download them) and exports the image tower HMA's CLIP signal
uses. The exported graph L2-normalises its output (the encoder normalises again; harmless).
Needs torch: imported only by the `models export` command and the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from horde_scanner.config import DEFAULT_EMBEDDING_MODEL
from horde_scanner.errors import FinalError

OPENCLIP_MODEL = "xlm-roberta-base-ViT-B-32"
OPENCLIP_PRETRAINED = "laion5b_s13b_b90k"


class ExportUnavailable(FinalError):
    """What an export needs is not installed (torch, open_clip) or cannot be loaded."""


def export_encoder(module: Any, path: Path, side: int = 224, *, opset: int = 17) -> Path:
    """Write `module` (torch, image -> embedding) to `path` as ONNX, batch size dynamic."""
    try:
        import torch
    except ImportError:
        raise ExportUnavailable(
            "exporting a model needs torch: pip install 'horde-scanner[export]'"
        ) from None

    class Normalised(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixels: Any) -> Any:
            return torch.nn.functional.normalize(self.inner(pixels), dim=-1)

    wrapped = Normalised(module).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (torch.zeros(1, 3, side, side),),
            str(tmp),
            input_names=["pixel_values"],
            output_names=["embedding"],
            dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    tmp.replace(path)
    return path


def export_openclip(
    path: Path, model_name: str = OPENCLIP_MODEL, pretrained: str = OPENCLIP_PRETRAINED
) -> Path:
    """Export OpenCLIP's image tower (`model.visual`) with its pretrained weights; open_clip
    downloads them on first use (its own cache)."""
    try:
        import open_clip
    except ImportError:
        raise ExportUnavailable(
            "exporting the CLIP image encoder needs open_clip and torch:"
            " pip install 'horde-scanner[export]' (on a machine that may download the weights)"
        ) from None
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except Exception as exc:
        raise ExportUnavailable(f"cannot load {model_name} / {pretrained}: {exc}") from None
    return export_encoder(model.visual.eval(), path)


def default_model_id() -> str:
    return DEFAULT_EMBEDDING_MODEL
