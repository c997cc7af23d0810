"""Image encoders the tests and the benchmark build themselves (random weights, no download),
exported to ONNX with the same code `models export` uses.

`TinyEncoder`: pixels pooled to an 8 x 8 grid, centred per channel, through a fixed random
projection to `dim`. Two images whose coarse layout differs get dissimilar vectors; a
re-encoded or resized copy gets nearly the same one ("identical under the model's tolerance").

`vit_b32`: the ViT-B/32 image tower's architecture (patch 32, width 768, 12 layers, 12 heads,
projection to 512) with random weights: the cost of the real encoder, for the benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from horde_scanner.signals.export import export_encoder


def tiny_encoder(dim: int = 512, seed: int = 0) -> Any:
    import torch

    class TinyEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(seed)
            self.pool = torch.nn.AdaptiveAvgPool2d(8)
            self.proj = torch.nn.Linear(3 * 64, dim, bias=False)
            with torch.no_grad():
                self.proj.weight.copy_(torch.randn(dim, 3 * 64, generator=generator))

        def forward(self, pixels: Any) -> Any:
            # The layout of each colour channel, not its level: two flat images of one colour
            # must not look alike just by colour.
            grid = self.pool(pixels)
            grid = grid - grid.mean(dim=(2, 3), keepdim=True)
            return self.proj(grid.flatten(1))

    return TinyEncoder().eval()


def vit_b32(dim: int = 512, side: int = 224) -> Any:
    import torch

    width, heads, patch = 768, 12, 32

    class Block(torch.nn.Module):
        """A pre-norm transformer block, written out (torch's fused encoder layer does not
        export to ONNX)."""

        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = torch.nn.LayerNorm(width)
            self.qkv = torch.nn.Linear(width, 3 * width)
            self.out = torch.nn.Linear(width, width)
            self.ln_2 = torch.nn.LayerNorm(width)
            self.fc = torch.nn.Linear(width, 4 * width)
            self.proj = torch.nn.Linear(4 * width, width)

        def forward(self, x: Any) -> Any:
            b, n, _ = x.shape
            q, k, v = (
                self.qkv(self.ln_1(x))
                .reshape(b, n, 3, heads, width // heads)
                .permute(2, 0, 3, 1, 4)
            )
            attn = torch.softmax(q @ k.transpose(-2, -1) * (width // heads) ** -0.5, dim=-1)
            x = x + self.out((attn @ v).transpose(1, 2).reshape(b, n, width))
            return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln_2(x))))

    class ViT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = torch.nn.Conv2d(3, width, patch, patch, bias=False)
            tokens = (side // patch) ** 2 + 1
            self.cls = torch.nn.Parameter(torch.randn(1, 1, width) * 0.02)
            self.pos = torch.nn.Parameter(torch.randn(1, tokens, width) * 0.02)
            self.ln_pre = torch.nn.LayerNorm(width)
            self.blocks = torch.nn.Sequential(*(Block() for _ in range(12)))
            self.ln_post = torch.nn.LayerNorm(width)
            self.head = torch.nn.Linear(width, dim, bias=False)

        def forward(self, pixels: Any) -> Any:
            x = self.patch(pixels).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            x = self.blocks(self.ln_pre(x))
            return self.head(self.ln_post(x[:, 0]))

    return ViT().eval()


def write_tiny_encoder(path: Path, dim: int = 512, seed: int = 0) -> Path:
    return export_encoder(tiny_encoder(dim, seed), path)


def write_vit_b32(path: Path) -> Path:
    return export_encoder(vit_b32(), path)
