"""A sequential recommender: a causal transformer over each user's most recent items.

SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): item and
learned position embeddings, pre-LayerNorm transformer blocks with a causal mask (as
nanoGPT's model.py), and the hidden state at each position scoring the next item by a dot
product with the same item embeddings the input uses. Training is point-wise, as in SASRec:
binary cross-entropy of each next item against sampled negatives. With many negatives the
positive term is calibrated as gSASRec's generalised BCE (Petrov & Macdonald, "gSASRec:
Reducing Overconfidence in Sequential Recommendation Trained with Negative Sampling",
RecSys 2023): ``-beta * log sigmoid(s+)``, ``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``
with ``alpha`` the sampling rate and ``t`` the calibration; ``t = 0`` is plain BCE.

Additions for this platform:

- item embeddings start from text: an item's vector is a learned projection of its frozen
  MiniLM text embedding (``training.text``) plus a learned per-item residual that starts at
  zero, so items with few or no interactions still sit near similar items;
- a learned begin-of-sequence token opens every history, so an empty history (a new user)
  and a short one (a few fresh interactions) are states the model was trained on;
- request context (hour, weekday, device of the interaction being predicted) adds learned
  embeddings to the final hidden state, so the next-item score depends on it; context fields
  are dropped at random in training so an unknown context (index 0) is a trained state too;
- ``rerank`` orders another model's candidates by this model's scores.
"""

from __future__ import annotations

import math
import os as _os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.data import InteractionData, UserQuery, Vocabulary, item_text
from training.models.base import Recommender, ResolvedUser

HOURS, WEEKDAYS = 24, 7


@dataclass
class SeqTransformerConfig:
    max_len: int = 50  # most recent items per sequence (SASRec: 50; 200 on ML-1M)
    dim: int = 64  # embedding and hidden size
    heads: int = 2  # attention heads; dim must divide by it
    layers: int = 2  # transformer blocks
    dropout: float = 0.2  # on embeddings, attention and residual branches
    epochs: int = 60  # passes over every user's sequence windows
    batch_size: int = 128  # sequence windows per step
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    negatives: int = 128  # sampled negative items per step, shared by its positions
    calibration: float = 0.75  # gBCE t in [0, 1]; 0: plain BCE
    context_dropout: float = 0.1  # chance a training target's context field reads "unknown"
    seed: int = 42
    device: str = "auto"  # "auto": cuda when available, else cpu; or "cpu", "cuda", "cuda:1"
    use_text: bool = True  # item vectors start from MiniLM text; False: from the ids alone
    text_model: str | None = None  # a local sentence-encoder folder; None: MiniLM's package
    text_cache_dir: str | None = None  # where encoded item texts are cached; None: no cache
    show_progress: bool = True  # a tqdm bar over epochs

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value makes no sense."""
        positive = ("max_len", "dim", "heads", "layers", "epochs", "batch_size", "negatives")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(
                    f"seq_transformer: {name} must be a positive integer, got {value!r}"
                )
        if self.dim % self.heads:
            raise ValueError(
                f"seq_transformer: dim must be divisible by heads (dim={self.dim}, "
                f"heads={self.heads})"
            )
        for name, low, high in (
            ("dropout", 0.0, 1.0), ("context_dropout", 0.0, 1.0), ("calibration", 0.0, 1.0),
        ):  # fmt: skip
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or not low <= value <= high
                or (value == 1.0
                and (name == "dropout"))
            ):
                raise ValueError(
                    f"seq_transformer: {name} must be in [{low}, {high}"
                    f"{')' if name == 'dropout' else ']'}, got {value!r}"
                )
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or (name == "lr" and value == 0):
                raise ValueError(
                    f"seq_transformer: {name} must be a positive number, got {value!r}"
                )
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise ValueError(
                f"seq_transformer: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                f"got {self.device!r}"
            )


# -- the network ---------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SeqTransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape  # (B, L, D)
        q, k, v = self.qkv(x).split(dim, dim=2)
        # (B, L, D) -> (B, heads, L, D / heads)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, L, D / heads)
        y = y.transpose(1, 2).contiguous().view(batch, length, dim)
        return self.residual_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: SeqTransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.dim, 4 * config.dim)
        self.proj = nn.Linear(4 * config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: SeqTransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), allowed)
        return x + self.mlp(self.ln_2(x))


class SasRec(nn.Module):
    """Item indices: 0 padding, 1..items the catalogue, items + 1 the begin-of-sequence token."""

    def __init__(self, config: SeqTransformerConfig, items: int, devices: int, text_dim: int):
        super().__init__()
        self.items = items
        self.bos = items + 1
        # Frozen text vectors (items + 2, text_dim); zero rows for padding and BOS.
        self.register_buffer("text", torch.zeros(items + 2, text_dim))
        self.text_proj = nn.Linear(text_dim, config.dim, bias=False) if text_dim else None
        self.item_embedding = nn.Embedding(items + 2, config.dim, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, config.dim)
        # Context of the interaction being predicted; index 0 of each is "unknown".
        self.hour_embedding = nn.Embedding(HOURS + 1, config.dim)
        self.weekday_embedding = nn.Embedding(WEEKDAYS + 1, config.dim)
        self.device_embedding = nn.Embedding(devices + 1, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.layers)])
        self.ln_f = nn.LayerNorm(config.dim)
        self.apply(self._init_weights)
        if self.text_proj is not None:
            # The text carries the item at first: the id residual starts at zero.
            nn.init.zeros_(self.item_embedding.weight)
        for table in (self.hour_embedding, self.weekday_embedding, self.device_embedding):
            nn.init.zeros_(table.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])

    def item_vectors(self, index: torch.Tensor) -> torch.Tensor:
        """(...) item indices -> (..., D): id residual plus projected text."""
        vectors = self.item_embedding(index)
        if self.text_proj is not None:
            vectors = vectors + self.text_proj(self.text[index])
        return vectors

    def hidden(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices -> (B, L, D) states, each predicting the next item."""
        length = sequence.shape[1]
        positions = torch.arange(length, device=sequence.device)
        x = self.dropout(self.item_vectors(sequence) + self.position_embedding(positions))
        causal = torch.ones(length, length, dtype=torch.bool, device=sequence.device).tril()
        # (B, 1, L, L): attend to earlier real items; always to oneself, so that no row is
        # empty (an all-padding sequence would otherwise give NaN).
        allowed = causal & (sequence != 0)[:, None, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=sequence.device)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)

    def context(self, context: torch.Tensor) -> torch.Tensor:
        """(..., 3) hour, weekday, device indices -> (..., D)."""
        return (
            self.hour_embedding(context[..., 0])
            + self.weekday_embedding(context[..., 1])
            + self.device_embedding(context[..., 2])
        )

    def user_vectors(self, sequence: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, L) sequences and (B, 3) contexts -> (B, D): the last state plus context."""
        return self.hidden(sequence)[:, -1] + self.context(context)

    def all_item_vectors(self) -> torch.Tensor:
        """(items, D) catalogue vectors, in catalogue order."""
        return self.item_vectors(torch.arange(1, self.items + 1, device=self.text.device))


# -- the recommender ------------------------------------------------------------------------------


class SeqTransformer(Recommender):
    """SASRec with text-initialised items, request context and a re-ranking entry point."""

    kind = "seq_transformer"
    config: SeqTransformerConfig

    def __init__(self, config: SeqTransformerConfig | None = None):
        super().__init__(config)
        self.config.validate()
        self.network: SasRec | None = None
        self.devices: Vocabulary = Vocabulary([])
        self.history: list[dict[str, float]] = []

    @classmethod
    def default_config(cls) -> SeqTransformerConfig:
        return SeqTransformerConfig()

    # -- data to tensors ----------------------------------------------------------------------

    def _device(self) -> torch.device:
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    def _context_indices(self, hour: Any, weekday: Any, device: Any) -> tuple[int, int, int]:
        def bucket(value: Any, size: int) -> int:
            try:
                number = float(value)
            except (TypeError, ValueError):
                return 0
            return 0 if math.isnan(number) else int(number) % size + 1

        known = isinstance(device, str) and device != "unknown"
        return (
            bucket(hour, HOURS),
            bucket(weekday, WEEKDAYS),
            self.devices.index.get(device, 0) if known else 0,
        )

    def _sequence(self, history: Sequence[str]) -> np.ndarray:
        """(max_len,) indices: BOS and the history, the most recent last, left-padded."""
        items = [self.item_index[i] + 1 for i in history if i in self.item_index]
        tokens = ([self.network.bos] + items)[-self.config.max_len :]
        row = np.zeros(self.config.max_len, dtype=np.int64)
        row[self.config.max_len - len(tokens) :] = tokens
        return row

    def _windows(self, data: InteractionData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Training windows: inputs (W, L) and targets (W, L) item indices, target contexts
        (W, L, 3). A user's inputs are BOS and their items, the targets their items; long
        histories are cut into consecutive windows of max_len, the most recent last."""
        frame = data.interactions.sort_values(
            ["user_id", "interacted_at", "item_id"], kind="stable"
        )
        items = frame["item_id"].map(self.item_index).to_numpy(dtype=np.int64) + 1
        context = np.array(
            [
                self._context_indices(h, w, d)
                for h, w, d in zip(frame["hour"], frame["weekday"], frame["device"], strict=True)
            ],
            dtype=np.int64,
        ).reshape(-1, 3)
        length, bos = self.config.max_len, self.network.bos
        inputs, targets, contexts = [], [], []
        for positions in frame.groupby("user_id", sort=True).indices.values():
            user_items, user_context = items[positions], context[positions]
            user_inputs = np.concatenate([[bos], user_items[:-1]])
            for end in range(len(positions), 0, -length):
                start = max(0, end - length)
                pad = length - (end - start)
                inputs.append(np.pad(user_inputs[start:end], (pad, 0)))
                targets.append(np.pad(user_items[start:end], (pad, 0)))
                contexts.append(np.pad(user_context[start:end], ((pad, 0), (0, 0))))
        if not inputs:
            raise ValueError("seq_transformer: the training data has no interactions")
        return np.stack(inputs), np.stack(targets), np.stack(contexts)

    def _text_vectors(self, data: InteractionData) -> np.ndarray:
        """(items, text_dim) MiniLM vectors of the catalogue's item texts."""
        from training.text import encode

        texts = [item_text(row) for _, row in data.items.iterrows()]
        return encode(
            texts, self.config.text_model, cache_dir=self.config.text_cache_dir,
            show_progress=self.config.show_progress,
        )  # fmt: skip

    # -- training -----------------------------------------------------------------------------

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        from tqdm.auto import tqdm

        if warm_start is not None:
            # The champion's architecture is what its weights fit; keep it.
            for name in ("max_len", "dim", "heads", "layers", "use_text"):
                setattr(self.config, name, getattr(warm_start.config, name))
        self.config.validate()
        config, device = self.config, self._device()
        device_names = data.interactions["device"].dropna().astype(str)
        self.devices = Vocabulary(sorted(set(device_names) - {"unknown"}))
        text = self._text_vectors(data) if config.use_text else np.zeros((len(self.item_ids), 0))

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            network = SasRec(config, len(self.item_ids), len(self.devices) - 1, text.shape[1])
            if text.shape[1]:
                network.text[1 : len(self.item_ids) + 1] = torch.from_numpy(text)
            if warm_start is not None:
                _copy_weights(warm_start, self, network)
            self.network = network.to(device)
            inputs, targets, contexts = self._windows(data)
            generator = torch.Generator().manual_seed(config.seed)
            optimiser = torch.optim.AdamW(
                network.parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
            items = len(self.item_ids)
            negatives = min(config.negatives, max(items - 1, 1))
            # gBCE: beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha), alpha the sampling rate.
            alpha = negatives / max(items - 1, 1)
            beta = alpha * (config.calibration * (1 - 1 / alpha) + 1 / alpha)
            self.history = []
            bar = tqdm(
                range(config.epochs), desc="seq_transformer", unit="epoch",
                disable=not config.show_progress,
            )  # fmt: skip
            network.train()
            for epoch in bar:
                order = torch.randperm(len(inputs), generator=generator).numpy()
                total, count = 0.0, 0
                for start in range(0, len(order), config.batch_size):
                    rows = order[start : start + config.batch_size]
                    sequence = torch.from_numpy(inputs[rows]).to(device)  # (B, L)
                    target = torch.from_numpy(targets[rows]).to(device)  # (B, L)
                    context = torch.from_numpy(contexts[rows])  # (B, L, 3)
                    drop = torch.rand(context.shape, generator=generator) < config.context_dropout
                    context = context.masked_fill(drop, 0).to(device)
                    sampled = torch.randint(1, items + 1, (negatives,), generator=generator)
                    sampled = sampled.to(device)  # (K,)

                    state = network.hidden(sequence) + network.context(context)  # (B, L, D)
                    positive = (state * network.item_vectors(target)).sum(-1)  # (B, L)
                    negative = state @ network.item_vectors(sampled).T  # (B, L, K)
                    is_real = target != 0  # (B, L)
                    # A sampled item that is the position's own target is no negative.
                    keep = (sampled[None, None, :] != target[..., None]).float()  # (B, L, K)
                    loss = beta * F.softplus(-positive) + (F.softplus(negative) * keep).sum(-1)
                    loss = loss[is_real].mean()
                    if _os.environ.get("SX_CE"):
                        logits = state[is_real] @ network.all_item_vectors().T
                        loss = F.cross_entropy(logits, target[is_real] - 1)

                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    total += loss.item() * int(is_real.sum())
                    count += int(is_real.sum())
                self.history.append({"epoch": epoch, "loss": total / max(count, 1)})
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            network.eval()

    # -- scoring ------------------------------------------------------------------------------

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        if self.network is None:
            raise RuntimeError("seq_transformer: fit or load the model before scoring")
        if not users:
            return np.zeros((0, len(self.item_ids)), dtype=np.float32)
        device = next(self.network.parameters()).device
        sequences = np.stack([self._sequence(user.history) for user in users])
        contexts = np.array(
            [
                self._context_indices(
                    user.context.get("hour"),
                    user.context.get("weekday"),
                    user.context.get("device"),
                )  # fmt: skip
                for user in users
            ],
            dtype=np.int64,
        )
        out = []
        with torch.inference_mode():
            items = self.network.all_item_vectors()  # (N, D)
            for start in range(0, len(users), 1024):
                sequence = torch.from_numpy(sequences[start : start + 1024]).to(device)
                context = torch.from_numpy(contexts[start : start + 1024]).to(device)
                vectors = self.network.user_vectors(sequence, context)  # (B, D)
                out.append((vectors @ items.T).float().cpu().numpy())  # (B, N)
        return np.concatenate(out) + self.popularity_prior().astype(np.float32)

    def rerank(
        self, users: Sequence[UserQuery], candidates: Sequence[Sequence[str]]
    ) -> list[list[tuple[str, float]]]:
        """Each user's candidate items (another model's top items, say) ordered by this
        model's scores, best first; an item the model does not know ranks last."""
        if len(users) != len(candidates):
            raise ValueError(
                f"candidates: {len(candidates)} lists for {len(users)} users (one per user)"
            )
        scores = self.score(users)
        floor = scores.min(initial=0.0) - 1.0
        ranked = []
        for row, items in enumerate(candidates):
            pairs = [
                (item, float(scores[row, self.item_index[item]]) if item in self.item_index
                 else float(floor))
                for item in items
            ]  # fmt: skip
            ranked.append(sorted(pairs, key=lambda pair: -pair[1]))
        return ranked

    # -- save and load ------------------------------------------------------------------------

    def _state(self) -> dict[str, np.ndarray]:
        if self.network is None:
            raise RuntimeError("seq_transformer: nothing to save before fit")
        state = {
            f"network.{name}": tensor.detach().cpu().numpy()
            for name, tensor in self.network.state_dict().items()
        }
        state["devices"] = np.array(self.devices.to_list(), dtype=np.str_)
        state["loss_history"] = np.array([row["loss"] for row in self.history], dtype=np.float64)
        return state

    def _load_state(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        del path
        self.devices = Vocabulary(arrays["devices"].tolist())
        self.history = [
            {"epoch": epoch, "loss": float(loss)}
            for epoch, loss in enumerate(arrays["loss_history"])
        ]
        weights = {
            name.removeprefix("network."): torch.from_numpy(np.array(value))
            for name, value in arrays.items()
            if name.startswith("network.")
        }
        network = SasRec(
            self.config, len(self.item_ids), len(self.devices) - 1, weights["text"].shape[1]
        )
        network.load_state_dict(weights)
        self.network = network.to(self._device()).eval()


def _copy_weights(source: Recommender, target: SeqTransformer, network: SasRec) -> None:
    """Start ``network`` from ``source``'s weights: shared layers as they are, item and
    device rows by id (the vocabularies may differ); new items keep their fresh rows."""
    if not isinstance(source, SeqTransformer) or source.network is None:
        raise ValueError("warm_start: a fitted seq_transformer model is needed")
    old = {name: tensor.detach().cpu() for name, tensor in source.network.state_dict().items()}
    new = network.state_dict()
    by_id = {
        "item_embedding.weight": _row_map(source.item_ids, target.item_ids),
        "device_embedding.weight": _row_map(source.devices.to_list(), target.devices.to_list()),
    }
    with torch.no_grad():
        for name, tensor in new.items():
            if name == "text":
                continue  # the new catalogue's own text
            if name in by_id:
                rows_new, rows_old = by_id[name]
                tensor[0] = old[name][0]
                tensor[rows_new] = old[name][rows_old]
                if name == "item_embedding.weight":
                    tensor[-1] = old[name][-1]  # the begin-of-sequence token
            elif old[name].shape == tensor.shape:
                tensor.copy_(old[name])
            else:
                raise ValueError(f"warm_start: {name} has shape {tuple(old[name].shape)}, "
                                 f"this model {tuple(tensor.shape)}")  # fmt: skip


def _row_map(old_ids: list[str], new_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (1-based, 0 being padding or unknown) of the ids both lists hold."""
    old_index = {value: row + 1 for row, value in enumerate(old_ids)}
    pairs = [(row + 1, old_index[value]) for row, value in enumerate(new_ids) if value in old_index]
    rows_new, rows_old = zip(*pairs, strict=True) if pairs else ((), ())
    return torch.tensor(rows_new, dtype=torch.long), torch.tensor(rows_old, dtype=torch.long)


__all__ = ["SeqTransformer", "SeqTransformerConfig", "fields"]
