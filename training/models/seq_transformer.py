"""A sequential recommender: a causal transformer over each user's most recent items.

SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): item and
learned position embeddings, pre-LayerNorm transformer blocks under a causal mask (the
blocks as in nanoGPT's model.py), and the hidden state at each position scoring the next
item by a dot product with the same item vectors the input uses. Training is point-wise as
in SASRec: binary cross-entropy of each next item against sampled negative items.

Three choices that make BCE train well in a few epochs:

- many negatives per step (``negatives``, the whole catalogue when it is smaller), shared by
  the step's positions so they cost one matrix product;
- gSASRec's generalised BCE (Petrov & Macdonald, "gSASRec: Reducing Overconfidence in
  Sequential Recommendation Trained with Negative Sampling", RecSys 2023), which weights the
  positive term by ``beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)``, with ``alpha`` the
  share of items sampled and ``t`` the ``calibration`` (``t = 0``: plain BCE);
- a per-item output bias: BCE wants nearly every logit far below zero, which a bias gives
  without bending the dot products (softmax would not care, BCE does). On MovieLens-100K it
  is the difference between an NDCG@10 below popularity and one above EASE.

Additions for this platform:

- items start from their text: an item's vector is a learned projection of its frozen
  MiniLM embedding (``training.text``) and a multi-hot of its categories, plus a learned
  per-item residual that starts at zero, so items with few or no interactions sit near
  similar items. (The categories, as in the two-tower: the sentence embedding of "Genres:
  Action, Comedy" blurs them; read apart, P2 NDCG@10 0.273 -> 0.315, P4 0.1225 -> 0.1251
  on MovieLens-100K.);
- a learned begin-of-sequence token opens every history, so an empty history (a new user)
  and a short one (a few fresh interactions) are states the model was trained on;
- request context (hour, weekday and device of the interaction being predicted) adds learned
  embeddings to the final hidden state, so the next-item score depends on it; context fields
  read "unknown" at random in training, so an unknown context is a trained state too;
- ``rerank`` orders another model's candidate lists by this model's scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.data import (
    InteractionData,
    UserQuery,
    Vocabulary,
    category_columns,
    item_text,
    shared_rows,
)
from training.models.base import Recommender, ResolvedUser

HOURS, WEEKDAYS = 24, 7
SCORE_BATCH = 1024  # users per forward pass when scoring


@dataclass
class SeqTransformerConfig:
    max_len: int = 50  # most recent items the model reads (SASRec: 50; 200 on ML-1M)
    dim: int = 64  # item, position, context and hidden vector size
    heads: int = 2  # attention heads; dim must divide by it
    layers: int = 2  # transformer blocks
    dropout: float = 0.2  # on the input embeddings and the residual branches
    epochs: int = 25  # passes over every user's windows of max_len items
    batch_size: int = 64  # windows per step
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    negatives: int = 2048  # distinct items sampled per step as negatives (all, when fewer)
    calibration: float = 0.75  # gBCE's t in [0, 1]; 0: plain BCE
    context_dropout: float = 0.1  # chance a training target's context field reads "unknown"
    seed: int = 42  # same seed, same data: the same scores (on CPU)
    device: str = "auto"  # "auto": cuda when available, else cpu; or "cpu", "cuda", "cuda:1"
    use_text: bool = True  # items start from their MiniLM text; False: from their ids alone
    categories: bool = True  # with use_text, items' category multi-hot beside their text
    text_model: str | None = None  # a local sentence-encoder folder; None: MiniLM's package
    text_cache_dir: str | None = None  # where encoded item texts are kept; None: no cache
    show_progress: bool = True  # tqdm bars (text encoding, epochs)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ValueError naming the first field whose value cannot work."""
        for name in ("max_len", "dim", "heads", "layers", "epochs", "batch_size", "negatives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim: must divide by heads={self.heads}, got {self.dim}")
        for name, closed in (("dropout", False), ("context_dropout", True), ("calibration", True)):
            value = getattr(self, name)
            if not _is_number(value) or not (0 <= value <= 1 if closed else 0 <= value < 1):
                interval = "[0, 1]" if closed else "[0, 1)"
                raise ValueError(f"{name}: must lie in {interval}, got {value!r}")
        if not _is_number(self.lr) or self.lr <= 0:
            raise ValueError(f"lr: must be a positive number, got {self.lr!r}")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be a number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda")
            or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ValueError(
                f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- the network --------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SeqTransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape  # (B, L, D)
        q, k, v = self.qkv(x).split(dim, dim=2)
        # (B, L, D) -> (B, heads, L, D / heads)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, heads, L, D / h)
        y = y.transpose(1, 2).contiguous().view(batch, length, dim)  # (B, L, D)
        return self.dropout(self.proj(y))


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
    """Item indices: 0 is padding, 1..items the catalogue in its order, items + 1 the
    begin-of-sequence token. Context indices: 0 is unknown."""

    def __init__(self, config: SeqTransformerConfig, items: int, devices: int, text_dim: int):
        super().__init__()
        self.items = items
        self.bos = items + 1
        # Frozen text vectors (items + 2, text_dim), zero for padding and BOS.
        self.register_buffer("text", torch.zeros(items + 2, text_dim))
        self.text_proj = nn.Linear(text_dim, config.dim, bias=False) if text_dim else None
        self.item_embedding = nn.Embedding(items + 2, config.dim, padding_idx=0)
        self.item_bias = nn.Embedding(items + 2, 1)
        self.position_embedding = nn.Embedding(config.max_len, config.dim)
        self.hour_embedding = nn.Embedding(HOURS + 1, config.dim)
        self.weekday_embedding = nn.Embedding(WEEKDAYS + 1, config.dim)
        self.device_embedding = nn.Embedding(devices + 1, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.layers)])
        self.ln_f = nn.LayerNorm(config.dim)
        self.apply(self._init_weights)
        if self.text_proj is not None:
            nn.init.zeros_(self.item_embedding.weight)  # the text carries the item at first
        for table in (self.hour_embedding, self.weekday_embedding, self.device_embedding):
            nn.init.zeros_(table.weight)  # context starts neutral
        # Logits start near log(1 / items), where BCE against most of the catalogue settles.
        nn.init.constant_(self.item_bias.weight, -math.log(items + 1))

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

    def item_table(self) -> torch.Tensor:
        """(items + 2, D) every item's vector: the id residual plus the projected text."""
        table = self.item_embedding.weight
        if self.text_proj is not None:
            table = table + self.text_proj(self.text)
        return table

    def hidden(self, sequence: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices -> (B, L, D) states, each predicting the next item."""
        length = sequence.shape[1]
        positions = torch.arange(length, device=sequence.device)
        x = self.dropout(table[sequence] + self.position_embedding(positions))  # (B, L, D)
        causal = torch.ones(length, length, dtype=torch.bool, device=sequence.device).tril()
        # (B, 1, L, L): attend to earlier real items, and always to oneself, so that no row is
        # all masked (an all-padding sequence would otherwise give NaN).
        allowed = causal & (sequence != 0)[:, None, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=sequence.device)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)

    def context(self, context: torch.Tensor) -> torch.Tensor:
        """(..., 3) hour, weekday and device indices -> (..., D)."""
        return (
            self.hour_embedding(context[..., 0])
            + self.weekday_embedding(context[..., 1])
            + self.device_embedding(context[..., 2])
        )

    def scores(self, sequence: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(B, L) sequences and (B, 3) contexts of the next interaction -> (B, items) logits
        of every catalogue item as that next item."""
        table = self.item_table()  # (items + 2, D)
        state = self.hidden(sequence, table)[:, -1] + self.context(context)  # (B, D)
        catalogue = slice(1, self.items + 1)
        return state @ table[catalogue].T + self.item_bias.weight[catalogue, 0]  # (B, items)


# -- the recommender ----------------------------------------------------------------------------


class SeqTransformer(Recommender):
    """SASRec over users' recent items, with text-initialised items and request context."""

    kind = "seq_transformer"
    config: SeqTransformerConfig

    def __init__(self, config: SeqTransformerConfig | None = None):
        super().__init__(config)
        self.network: SasRec | None = None
        self.devices = Vocabulary([])  # device names seen in training; 0 is unknown
        self.history: list[dict[str, float]] = []  # training loss per epoch
        self.category_names: list[str] = []  # the multi-hot's columns (see _text_vectors)

    @classmethod
    def default_config(cls) -> SeqTransformerConfig:
        return SeqTransformerConfig()

    # -- training -------------------------------------------------------------------------------

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        from tqdm.auto import tqdm

        if warm_start is not None:
            _check_warm_start(warm_start)
            # The champion's weights only fit the champion's shapes.
            for name in ("max_len", "dim", "heads", "layers", "use_text", "categories"):
                setattr(self.config, name, getattr(warm_start.config, name))
        config, device = self.config, self._device()
        config.check()
        if data.interactions.empty:
            raise ValueError("interactions: seq_transformer needs at least one to train on")
        devices = set(data.interactions["device"].dropna().astype(str)) - {"unknown"}
        self.devices = Vocabulary(sorted(devices))
        text = self._text_vectors(data, warm_start)  # (items, text_dim); 0 without text
        items = len(self.item_ids)

        with torch.random.fork_rng(devices=[_cuda_index(device)] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)  # initial weights and dropout
            generator = torch.Generator().manual_seed(config.seed)  # batches and negatives
            network = SasRec(config, items, len(self.devices) - 1, text.shape[1])
            network.text[1 : items + 1] = torch.from_numpy(text)
            if warm_start is not None:
                _copy_weights(warm_start, self, network)
            self.network = network = network.to(device)
            inputs, targets, contexts = self._windows(data)  # (W, L), (W, L), (W, L, 3)
            optimiser = torch.optim.AdamW(
                network.parameters(), lr=config.lr, weight_decay=config.weight_decay
            )
            negatives = min(config.negatives, max(items - 1, 1))
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
                    unknown = torch.rand(context.shape, generator=generator)
                    context = context.masked_fill(unknown < config.context_dropout, 0).to(device)
                    sampled = torch.randperm(items, generator=generator)[:negatives] + 1
                    sampled = sampled.to(device)  # (K,)

                    table = network.item_table()  # (items + 2, D)
                    bias = network.item_bias.weight[:, 0]  # (items + 2,)
                    state = network.hidden(sequence, table) + network.context(context)
                    is_real = target != 0  # (B, L)
                    state, target = state[is_real], target[is_real]  # (P, D), (P,)
                    positive = (state * table[target]).sum(-1) + bias[target]  # (P,)
                    negative = state @ table[sampled].T + bias[sampled]  # (P, K)
                    # A position's own target among the sampled items is no negative.
                    is_sampled = torch.zeros(items + 2, dtype=torch.bool, device=device)
                    is_sampled[sampled] = True
                    loss = (
                        beta * F.softplus(-positive)
                        + F.softplus(negative).sum(-1)
                        - is_sampled[target] * F.softplus(positive)
                    ).mean()

                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    total += loss.item() * len(target)
                    count += len(target)
                self.history.append({"epoch": epoch, "loss": total / count})
                bar.set_postfix(loss=f"{total / count:.4f}")
            network.eval()

    def _device(self) -> torch.device:
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    def _text_vectors(self, data: InteractionData, warm_start: SeqTransformer | None) -> np.ndarray:
        """(items, text_dim) MiniLM vectors of the catalogue's item texts, then their
        category multi-hot (text_dim 0 when the config turns text off). A warm start keeps
        its model's categories: its projection has one input per category."""
        if not self.config.use_text:
            self.category_names = []
            return np.zeros((len(self.item_ids), 0), dtype=np.float32)
        from training.text import encode

        texts = [item_text(row) for _, row in data.items.iterrows()]
        text = encode(
            texts, self.config.text_model, cache_dir=self.config.text_cache_dir,
            show_progress=self.config.show_progress,
        )  # fmt: skip
        kept = warm_start.category_names if warm_start is not None else None
        self.category_names, columns = category_columns(data.items, kept, self.config.categories)
        return np.concatenate([text, columns], axis=1)

    def _windows(self, data: InteractionData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Training windows: inputs and targets (W, L) item indices, target contexts (W, L, 3).

        A user's inputs are BOS then their items, the targets their items, so position i
        predicts item i from BOS and items before it. Histories longer than max_len are cut
        into consecutive windows, the last ending at the most recent item; short ones are
        left-padded with 0."""
        frame = data.interactions.sort_values(
            ["user_id", "interacted_at", "item_id"], kind="stable"
        )
        items = frame["item_id"].map(self.item_index).to_numpy(dtype=np.int64) + 1
        context = self._context_indices(frame["hour"], frame["weekday"], frame["device"])
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
        return np.stack(inputs), np.stack(targets), np.stack(contexts)

    def _context_indices(
        self, hours: Sequence[Any], weekdays: Sequence[Any], devices: Sequence[Any]
    ) -> np.ndarray:
        """(n, 3) hour, weekday and device indices; 0 wherever the value is missing or new."""

        def bucket(values: Sequence[Any], size: int) -> np.ndarray:
            numbers = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
            numbers = numbers.to_numpy(dtype=np.float64)
            known = np.isfinite(numbers)
            out = np.zeros(len(numbers), dtype=np.int64)
            out[known] = numbers[known].astype(np.int64) % size + 1
            return out

        device = np.fromiter(
            (self.devices.index.get(d, 0) if isinstance(d, str) else 0 for d in devices),
            dtype=np.int64, count=len(devices),
        )  # fmt: skip
        return np.stack([bucket(hours, HOURS), bucket(weekdays, WEEKDAYS), device], axis=1)

    # -- scoring --------------------------------------------------------------------------------

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        if self.network is None:
            raise RuntimeError("seq_transformer: fit or load the model before scoring")
        if not users:
            return np.zeros((0, len(self.item_ids)), dtype=np.float32)
        device = self.network.text.device
        sequences = np.stack([self._sequence(user.history) for user in users])  # (U, L)
        contexts = self._context_indices(
            [user.context.get("hour") for user in users],
            [user.context.get("weekday") for user in users],
            [user.context.get("device") for user in users],
        )  # (U, 3)
        out = []
        with torch.inference_mode():
            for start in range(0, len(users), SCORE_BATCH):
                sequence = torch.from_numpy(sequences[start : start + SCORE_BATCH]).to(device)
                context = torch.from_numpy(contexts[start : start + SCORE_BATCH]).to(device)
                if self.quantized:
                    out.append(self._scores_int8(sequence, context))
                else:
                    out.append(self.network.scores(sequence, context).float().cpu().numpy())
        # Ties (items the model cannot tell apart) break by popularity.
        return np.concatenate(out) + self.popularity_prior().astype(np.float32)

    @torch.inference_mode()
    def _quantize(self, text_encoder: bool) -> bool:
        from training.quantization import int8_layers

        del text_encoder  # item text was encoded once, in training

        # The blocks' dense layers (attention projections, MLP) go int8. The item table (id
        # vectors plus projected text) is fixed once trained: computed here once and kept in
        # float32, since int8 would slow its one-user product (training/quantization.py).
        network = self.network.cpu().eval()
        self.item_table = network.item_table().detach().clone()  # (items + 2, D)
        network.blocks = int8_layers(network.blocks)
        return True

    def _scores_int8(self, sequence: torch.Tensor, context: torch.Tensor) -> np.ndarray:
        """``SasRec.scores`` over the item table computed once by ``_quantize``."""
        network, table = self.network, self.item_table
        state = network.hidden(sequence, table)[:, -1] + network.context(context)  # (B, D)
        catalogue = slice(1, network.items + 1)
        return (state @ table[catalogue].T + network.item_bias.weight[catalogue, 0]).numpy()

    @torch.inference_mode()
    def item_embeddings(self) -> np.ndarray:
        if self.network is None:
            raise RuntimeError("seq_transformer: fit or load the model first")
        # Rows 1..n are the catalogue (0 pads, the last is BOS), as _sequence numbers them.
        return self.network.item_table()[1 : len(self.item_ids) + 1].float().cpu().numpy()

    def _sequence(self, history: Sequence[str]) -> np.ndarray:
        """(max_len,) BOS and the history's known items, the most recent last, left-padded."""
        items = [self.item_index[i] + 1 for i in history if i in self.item_index]
        tokens = ([self.network.bos, *items])[-self.config.max_len :]
        row = np.zeros(self.config.max_len, dtype=np.int64)
        row[self.config.max_len - len(tokens) :] = tokens
        return row

    def rerank(
        self, users: Sequence[UserQuery], candidates: Sequence[Sequence[str]]
    ) -> list[list[tuple[str, float]]]:
        """Each user's candidate items (another model's top list, say) ordered by this
        model's scores, best first; items the model does not know go last."""
        if len(users) != len(candidates):
            raise ValueError(
                f"candidates: one list per user, got {len(candidates)} for {len(users)} users"
            )
        scores = self.score(users)  # (users, catalogue)
        ranked = []
        for row, items in enumerate(candidates):
            floor = float(scores[row].min(initial=0.0)) - 1.0  # as score() places them
            columns = [self.item_index.get(item, -1) for item in items]
            values = [float(scores[row, c]) if c >= 0 else floor for c in columns]
            order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
            ranked.append([(items[i], values[i]) for i in order])
        return ranked

    # -- save and load --------------------------------------------------------------------------

    def _state(self) -> dict[str, np.ndarray]:
        if self.network is None:
            raise RuntimeError("seq_transformer: fit the model before saving it")
        state = {
            f"network.{name}": tensor.detach().cpu().numpy()
            for name, tensor in self.network.state_dict().items()
        }
        state["devices"] = np.array(self.devices.to_list(), dtype=np.str_)
        state["category_names"] = np.array(self.category_names, dtype=np.str_)
        state["loss"] = np.array([row["loss"] for row in self.history], dtype=np.float64)
        return state

    def _load_state(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        del path
        self.devices = Vocabulary(arrays["devices"].tolist())
        # Versions saved before the categories were read have none (their text is text alone).
        self.category_names = arrays.get("category_names", np.array([], dtype=np.str_)).tolist()
        self.history = [
            {"epoch": epoch, "loss": float(loss)} for epoch, loss in enumerate(arrays["loss"])
        ]
        weights = {
            name.removeprefix("network."): torch.from_numpy(value)
            for name, value in arrays.items()
            if name.startswith("network.")
        }
        network = SasRec(
            self.config, len(self.item_ids), len(self.devices) - 1, weights["text"].shape[1]
        )
        network.load_state_dict(weights)
        self.network = network.to(self._device()).eval()


# -- warm start ---------------------------------------------------------------------------------


def _check_warm_start(model: Recommender) -> None:
    if not isinstance(model, SeqTransformer) or model.network is None:
        raise ValueError("warm_start: needs a fitted seq_transformer model")


def _copy_weights(source: SeqTransformer, target: SeqTransformer, network: SasRec) -> None:
    """Start ``network`` from ``source``'s weights: item and device rows matched by id (the
    catalogue and devices may have changed; new ones keep their fresh rows), the rest as is.
    The text buffer stays the new catalogue's own."""
    old = {name: tensor.detach().cpu() for name, tensor in source.network.state_dict().items()}
    item_rows = _row_map(source.item_ids, target.item_ids, bos=(source.network.bos, network.bos))
    device_rows = _row_map(source.devices.to_list(), target.devices.to_list())
    by_id = {
        "item_embedding.weight": item_rows,
        "item_bias.weight": item_rows,
        "device_embedding.weight": device_rows,
    }
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if name == "text":
                continue
            if name in by_id:
                rows_new, rows_old = by_id[name]
                tensor[rows_new] = old[name][rows_old]
            elif tensor.shape == old[name].shape:
                tensor.copy_(old[name])
            else:  # a text encoder of another size, say
                raise ValueError(
                    f"warm_start: {name} is {tuple(old[name].shape)} in the champion, "
                    f"{tuple(tensor.shape)} here"
                )


def _row_map(
    old_ids: list[str], new_ids: list[str], bos: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new rows, old rows) of the ids both lists hold, row 0 (padding, unknown) and the
    begin-of-sequence rows included."""
    rows_new, rows_old = shared_rows(old_ids, new_ids)
    if bos is not None:
        rows_new, rows_old = np.append(rows_new, bos[1]), np.append(rows_old, bos[0])
    return torch.from_numpy(rows_new), torch.from_numpy(rows_old)


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
