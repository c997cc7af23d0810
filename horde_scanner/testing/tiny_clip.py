"""A tiny CLIP (random weights) and a tiny BPE tokenizer, saved the way real models are, so the
real transformers loading code runs in tests without downloading anything."""

from __future__ import annotations

import json
from pathlib import Path


def _byte_alphabet() -> list[str]:
    # CLIP's byte-level BPE alphabet (GPT-2's bytes_to_unicode table).
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tokenizer_files(directory: Path) -> tuple[Path, Path, int]:
    """vocab.json + merges.txt: every byte, with and without the end-of-word mark, and a few
    merges so that BPE really merges something."""
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges = ["p h", "o t", "ph ot", "c h", "i l", "il d</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file, len(vocab)


def build_tiny_clip(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random-weight CLIP and its tokenizer into `directory` (save_pretrained)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab_file, merges_file, vocab_size = write_tokenizer_files(directory / "tokenizer-src")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file))
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
