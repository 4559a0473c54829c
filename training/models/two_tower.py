"""A two-tower retrieval model: the platform's cold-start model.

A user tower and an item tower map each side to a vector; the score is their dot product
(an item bias rides along as one more coordinate), so all item vectors are precomputed and
scoring is one matrix product.

User tower: an MLP over the user's id, the means of their history's item id embeddings and
frozen text embeddings, a bucket of the history's length and their profile text embedding,
plus the mean of their attribute token embeddings (``gender=f``, ``age=25-34``) added
outside the MLP. The history is read at request time, so a new user's first clicks fold in
at once. Training shows the tower new users: ids drop out, and some examples keep only 0-5
history items (half of them the user's first by time, as a new user's are).

Item tower: the item's id embedding and bias plus an MLP over its sentence embedding
(all-MiniLM-L6-v2 over ``item_text``; frozen, or fine-tuned with LoRA) beside a multi-hot of
its categories (``categories``: the sentence embedding of "Genres: Action, Comedy" blurs
them; read apart, they added 0.005-0.007 AUC and 0.005-0.017 NDCG@10 on new items, P2 on
MovieLens-100K, over two seeds). The user tower pools the same features over the history.
Each step scores the batch twice, with the ids and with all of them dropped (text and
categories only, as an item without interactions is scored); dropout on those features keeps
that path from memorising.

Loss: softmax over the in-batch positives (and optional uniform extras) with the logQ
correction, so the scores keep the popularity a cold user's ranking leans on; or BPR with
uniformly drawn negatives. AdamW with cosine learning-rate decay.

References:
- Covington, Adams, Sargin. Deep Neural Networks for YouTube Recommendations. RecSys 2016.
- Yi et al. Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations.
  RecSys 2019 (in-batch softmax, logQ correction).
- Yang et al. Mixed Negative Sampling for Learning Two-tower Neural Networks in
  Recommendations. WWW 2020 Companion (in-batch plus uniform negatives).
- Volkovs, Yu, Poutanen. DropoutNet: Addressing Cold Start in Recommender Systems.
  NeurIPS 2017 (id dropout).
- Rendle et al. BPR: Bayesian Personalized Ranking from Implicit Feedback. UAI 2009.
- Reimers, Gurevych. Sentence-BERT. EMNLP 2019 (all-MiniLM-L6-v2 embeddings).
- Hu et al. LoRA: Low-Rank Adaptation of Large Language Models. ICLR 2022.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import (
    ATTRIBUTES,
    InteractionData,
    UserQuery,
    Vocabulary,
    attribute_tokens,
    category_columns,
    item_text,
    multi_hot,
    shared_rows,
)
from training.models.base import Recommender, ResolvedUser

LOSSES = ("sampled_softmax", "bpr")
TEXT_ENCODERS = ("frozen", "lora")
# History lengths a user tower tells apart: 0, 1, 2, 3, 4-5, 6-10, 11-20, 21-50, 51-100, 101+.
LENGTH_BUCKETS = np.array([1, 2, 3, 4, 6, 11, 21, 51, 101])
RECENT_PROFILES = 10_000  # profile texts met at scoring time whose vectors are kept
RECENT_ITEM_TEXTS = 10_000  # new items' texts met at scoring time whose vectors are kept
STACK_AT_LEAST = 64  # text lists this long are also kept stacked (the catalogue's new items)
NO_ADAPTERS = (
    "two_tower: this LoRA-tuned version reads no new item text: it was registered before "
    "LoRA adapters were saved with the model; retrain it"
)


@dataclass
class TwoTowerConfig:
    dim: int = 64  # size of the user and item vectors
    hidden: int = 256  # width of the towers' hidden layer
    epochs: int = 10  # passes over the training interactions
    batch_size: int = 512  # interactions per step (and in-batch negatives per positive)
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    dropout: float = 0.3  # on the towers' hidden layers
    user_id_dropout: float = 0.3  # share of examples whose user id is replaced by "unknown"
    text_only_weight: float = 0.5  # loss weight of the pass with all item ids dropped
    categories: bool = True  # the item tower also reads the items' categories (multi-hot)
    text_dropout: float = 0.5  # on the item text embedding, before the item tower
    max_history: int = 200  # history items pooled per training example, at most (on average)
    cold_user_share: float = 0.3  # examples posing as a new user: no id, 0-5 history items
    cold_first_share: float = 0.5  # of those, the share revealing their first items by time
    temperature: float = 0.1  # softmax temperature on the dot product
    logq_correction: bool = True  # subtract log sampling probability of in-batch negatives
    extra_negatives: int = 0  # uniformly sampled negatives per step besides the in-batch ones
    loss: str = "sampled_softmax"  # "sampled_softmax" (in-batch negatives) or "bpr"
    seed: int = 42
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    text_model: str | None = None  # a local HF folder; None: the packaged all-MiniLM-L6-v2
    text_cache_dir: str | None = None  # where encoded text is cached (None: no cache)
    text_encoder: str = "frozen"  # "frozen", or "lora" to fine-tune it with the towers
    lora_rank: int = 8  # LoRA rank on the encoder's query and value layers
    show_progress: bool = True  # tqdm bars while encoding and training

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"two_tower config: {name}={getattr(self, name)!r} is invalid "
                    f"(expected {expected})"
                )

        for name in ("dim", "hidden", "epochs", "batch_size", "max_history", "lora_rank"):
            value = getattr(self, name)
            check(name, isinstance(value, int) and value >= 1, "a positive integer")
        check("batch_size", self.batch_size >= 2, "at least 2")
        for name in ("dropout", "user_id_dropout", "text_dropout", "cold_user_share"):
            value = getattr(self, name)
            check(name, isinstance(value, int | float) and 0 <= value < 1, "a number in [0, 1)")
        value = self.cold_first_share
        check("cold_first_share", isinstance(value, int | float) and 0 <= value <= 1, "[0, 1]")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            check(name, isinstance(value, int | float) and value > 0, "a positive number")
        for name in ("weight_decay", "text_only_weight"):
            value = getattr(self, name)
            check(name, isinstance(value, int | float) and value >= 0, "a number >= 0")
        value = self.extra_negatives
        check("extra_negatives", isinstance(value, int) and value >= 0, "an integer >= 0")
        check("loss", self.loss in LOSSES, f"one of {LOSSES}")
        check("text_encoder", self.text_encoder in TEXT_ENCODERS, f"one of {TEXT_ENCODERS}")
        check(
            "device",
            isinstance(self.device, str)
            and (self.device in ("auto", "cpu") or self.device.startswith("cuda")),
            '"auto", "cpu" or "cuda[:n]"',
        )


# -- the towers ----------------------------------------------------------------------------


def _mlp(inputs: int, hidden: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs)
    )


class UserTower(nn.Module):
    def __init__(self, n_users: int, n_items: int, n_tokens: int, text_dim: int, item_dim: int, c):
        super().__init__()
        d = c.dim
        self.user = nn.Embedding(n_users, d)  # index 0: unknown user
        self.token = nn.Embedding(n_tokens, d, padding_idx=0)  # attribute tokens, 0: none
        self.history_item = nn.Embedding(n_items, d)  # item ids as history, 0: unknown item
        self.history_text = nn.Linear(item_dim, d)  # mean item features of the history
        self.profile_text = nn.Linear(text_dim, d)  # the user's own text, zeros when absent
        self.length = nn.Embedding(len(LENGTH_BUCKETS) + 1, d)
        self.mlp = _mlp(5 * d, c.hidden, d, c.dropout)
        for table in (self.user, self.token, self.history_item, self.length):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, batch: dict[str, torch.Tensor], item_text: torch.Tensor) -> torch.Tensor:
        # item_text: (catalogue items, item_dim) the items' features (text, then categories)
        tokens = batch["tokens"]  # (B, attributes), 0 = missing
        present = (tokens > 0).float().sum(1, keepdim=True).clamp(min=1)
        attributes = self.token(tokens).sum(1) / present  # (B, d)
        items, offsets = batch["history"], batch["offsets"]  # flat catalogue indices, (B,)
        history_ids = F.embedding_bag(
            batch["history_ids"], self.history_item.weight, offsets, mode="mean"
        )  # (B, d)
        history_text = F.embedding_bag(items, item_text, offsets, mode="mean")  # (B, item_dim)
        features = torch.cat(
            [
                self.user(batch["user"]),
                history_ids,
                self.history_text(history_text),
                self.profile_text(batch["profile"]),
                self.length(batch["length"]),
            ],
            dim=1,
        )  # (B, 5d)
        # Attributes add outside the MLP: shared by many users, they cannot stand in for an
        # id, so an attribute-only user gets a demographic tilt, not a training user's taste.
        return self.mlp(features) + attributes  # (B, d)


class ItemTower(nn.Module):
    def __init__(self, n_items: int, item_dim: int, c):
        super().__init__()
        self.item = nn.Embedding(n_items, c.dim)  # index 0: unknown (new) item
        self.item_bias = nn.Embedding(n_items, 1)
        self.text = nn.Sequential(
            nn.Dropout(c.text_dropout), _mlp(item_dim, c.hidden, c.dim + 1, c.dropout)
        )  # vector and bias, from the item's features
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, ids: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # ids: (N,) vocabulary indices (0 = unknown); text: (N, item_dim) the items' features
        # (sentence embedding, then the categories' multi-hot)
        from_text = self.text(text)  # (N, d + 1)
        vectors = self.item(ids) + from_text[:, :-1]  # (N, d)
        bias = self.item_bias(ids).squeeze(1) + from_text[:, -1]  # (N,)
        return vectors, bias


class Towers(nn.Module):
    def __init__(
        self, n_users: int, n_items: int, n_tokens: int, text_dim: int, n_categories: int, c
    ):
        super().__init__()
        item_dim = text_dim + n_categories
        self.users = UserTower(n_users, n_items, n_tokens, text_dim, item_dim, c)
        self.items = ItemTower(n_items, item_dim, c)


# -- the recommender -----------------------------------------------------------------------


class TwoTower(Recommender):
    kind = "two_tower"
    config: TwoTowerConfig

    @classmethod
    def default_config(cls) -> TwoTowerConfig:
        return TwoTowerConfig()

    def __init__(self, config: TwoTowerConfig | None = None):
        super().__init__(config)
        self.history: list[dict[str, float]] = []  # per-epoch training loss
        self.towers: Towers | None = None
        self.encoder = None  # the LoRA-tuned text encoder while fitting with text_encoder="lora"
        self.item_text_tuned: torch.Tensor | None = None  # its item embeddings, after fitting
        # Its adapters' weights (peft's state dict), saved with the model so that a loaded one
        # reads new items' text as it was trained to; None for a frozen encoder.
        self.lora_weights: dict[str, np.ndarray] | None = None
        self._tuned_encoder: tuple[Any, Any] | None = None  # (tokenizer, merged encoder), lazily
        self._forget_texts()

    def _forget_texts(self) -> None:
        """Empty the caches of what the towers and encoder made of texts: a refit changes
        the towers, int8 the encoder, and a kept vector would outlive the weights it came
        from."""
        self.recent_profiles: OrderedDict[str, np.ndarray] = OrderedDict()  # see _profiles
        # (text, categories) -> item vector: see score_texts and _text_item_vectors
        self.recent_item_texts: OrderedDict[tuple[str, tuple[str, ...]], np.ndarray] = OrderedDict()
        self.stacked_texts: dict[tuple, np.ndarray] = {}  # see _text_item_vectors
        self.last_stacked: tuple[tuple, tuple | None, np.ndarray] | None = None  # likewise

    # -- fitting ---------------------------------------------------------------------------

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        c = self.config
        c.validate()
        if data.interactions.empty:
            raise ValueError(f"{data.name}: no interactions to train a two_tower model on")
        self.device = _device(c.device)
        self.item_text_tuned = None
        self.lora_weights, self._tuned_encoder = None, None  # a refit's own, if it tunes text
        self._forget_texts()
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)

        self._build_vocabularies(data, warm_start)
        self.text = torch.from_numpy(self._encode(self._item_texts(data)))  # (items, text)
        self._set_item_features()
        self._set_profiles(data)
        self.towers = Towers(
            len(self.user_vocab), len(self.item_vocab), len(self.token_vocab),
            self.text.shape[1], len(self.category_names), c,
        ).to(self.device)  # fmt: skip
        if warm_start is not None:
            self._copy_weights(warm_start)

        frame = data.interactions
        users = self.user_vocab.lookup(list(frame["user_id"]))  # (N,)
        items = frame["item_id"].map(self.item_index).to_numpy(np.int64)  # (N,) catalogue
        # Each user's interactions in time order (ties by item), as the protocols order them.
        times = frame["interacted_at"].to_numpy()
        order = np.lexsort((frame["item_id"].to_numpy(), times, users))
        users, items = users[order], items[order]
        indptr = np.searchsorted(users, np.arange(len(self.user_vocab) + 1))
        counts = np.bincount(items, minlength=len(self.item_ids)).astype(np.float64)
        # Expected times an item is drawn among one step's negatives: in-batch (by popularity)
        # plus uniformly sampled extras.
        n_extra = min(c.extra_negatives, len(self.trained_items))
        batch_size = min(c.batch_size, len(items))
        expected = batch_size * counts / len(items) + n_extra / max(len(self.trained_items), 1)
        logq = torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float()

        text = self.item_features.to(self.device)  # (items, item_dim)
        tokens = torch.from_numpy(self.user_tokens)
        profiles = self.user_profiles
        item_ids = torch.from_numpy(self.item_id_index)
        item_ids_device = item_ids.to(self.device)
        logq = logq.to(self.device)
        if c.text_encoder == "lora":
            self._start_lora(data, warm_start)
        parameters = [p for p in self.towers.parameters()] + (
            [p for p in self.encoder.parameters() if p.requires_grad] if self.encoder else []
        )
        optimizer = torch.optim.AdamW(parameters, lr=c.lr, weight_decay=c.weight_decay)
        steps_per_epoch = max(1, len(users) // c.batch_size)
        # Cosine decay of the learning rate over the whole run.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=c.epochs * steps_per_epoch, eta_min=c.lr / 20
        )
        bar = _progress(c.epochs * steps_per_epoch, "training two_tower", c.show_progress)
        self.history = []
        for epoch in range(c.epochs):
            self.towers.train()
            permutation = rng.permutation(len(users))
            total = 0.0
            for step in range(steps_per_epoch):
                rows = permutation[step * c.batch_size : (step + 1) * c.batch_size]
                batch = self._training_batch(
                    users[rows], items[rows], indptr, items, tokens, profiles, item_ids, rng
                )
                batch = {k: v.to(self.device) for k, v in batch.items()}
                user_vectors = self.towers.users(batch, text)  # (B, d)
                # The columns every user is scored against: the batch's positives, then
                # uniformly drawn negatives (extras for the softmax, one per user for BPR).
                columns = batch["target"]
                n_negatives = len(rows) if c.loss == "bpr" else n_extra
                if n_negatives:
                    negatives = rng.choice(self.trained_items, n_negatives, replace=c.loss == "bpr")
                    columns = torch.cat([columns, torch.from_numpy(negatives).to(self.device)])
                column_text = self._item_text(columns, text)  # (columns, text)
                ids = item_ids_device[columns]
                # Item id dropout, for the whole batch at once: a second pass scores every
                # column from text alone, as new items are. (Dropping ids per column mixes
                # both kinds in one softmax and blurs what the ids learn: popularity.)
                loss = self._loss(user_vectors, columns, ids, column_text, logq)
                if c.text_only_weight:
                    text_only = self._loss(
                        user_vectors, columns, torch.zeros_like(ids), column_text, logq
                    )
                    loss = loss + c.text_only_weight * text_only
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            self.history.append({"epoch": epoch + 1, "loss": total / steps_per_epoch})
        bar.close()
        if self.encoder is not None:
            from peft import get_peft_model_state_dict

            self.item_text_tuned = torch.from_numpy(self._encode_tuned())
            self.lora_weights = {
                name: tensor.detach().cpu().numpy()
                for name, tensor in get_peft_model_state_dict(self.encoder).items()
            }
            self.encoder = None
        self._precompute_items()

    def _loss(self, users, columns, ids, column_text, logq) -> torch.Tensor:
        """The loss of a step: users (B, d) against item columns (C,) whose first B are the
        users' positives; ids (C,) are the columns' id indices (0: scored from text)."""
        c = self.config
        n = len(users)
        items, bias = self.towers.items(ids, column_text)  # (C, d), (C,)
        if c.loss == "bpr":
            scores = ((users * items[:n]).sum(1) + bias[:n]) - (
                (users * items[n:]).sum(1) + bias[n:]
            )  # (B,)
            return -F.logsigmoid(scores / c.temperature).mean()
        logits = (users @ items.T + bias[None, :]) / c.temperature  # (B, columns)
        if c.logq_correction:
            logits = logits - logq[columns][None, :]
        # The same item twice among the columns is no negative for itself.
        same = columns[:n, None] == columns[None, :]  # (B, columns)
        same[:, :n].fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(n, device=logits.device)
        return F.cross_entropy(logits, labels)

    def _training_batch(
        self, users, targets, indptr, indices, tokens, profiles, item_ids, rng
    ) -> dict[str, torch.Tensor]:
        """One step's examples: (user, positive item) pairs, with the user's other items as
        history. Some examples pose as new users (no id, 0-5 history items); ids drop out."""
        c = self.config
        n = len(users)
        cold = rng.random(n) < c.cold_user_share
        lengths = indptr[users + 1] - indptr[users]  # (n,)
        revealed = rng.integers(0, 6, n)  # (n,) history items a new user has
        first = cold & (rng.random(n) < c.cold_first_share)  # their first ones by time
        # The others get random ones. Long histories are subsampled (their mean stays the same
        # on average), which bounds a step's cost on data sets with heavy users.
        wanted = np.where(cold, revealed, c.max_history)
        keep = np.minimum(wanted / np.maximum(lengths - 1, 1), 1.0)  # (n,) share kept
        # Every history entry of every example, flat: row r owns lengths[r] entries.
        rows = np.repeat(np.arange(n), lengths)
        cumstart = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.arange(len(rows)) - cumstart  # within the user's time-ordered history
        history = indices[position + np.repeat(indptr[users], lengths)]
        chosen = np.where(
            first[rows], position < revealed[rows], rng.random(len(rows)) < keep[rows]
        )
        kept = (history != targets[rows]) & chosen
        history, rows = history[kept], rows[kept]
        sizes = np.bincount(rows, minlength=n)
        user_ids = np.where(cold | (rng.random(n) < c.user_id_dropout), 0, users)
        history_t = torch.from_numpy(history)
        return {
            "user": torch.from_numpy(user_ids),
            "tokens": tokens[users],
            "history": history_t,
            "history_ids": item_ids[history_t],
            "offsets": torch.from_numpy(np.cumsum(sizes) - sizes),
            "length": torch.from_numpy(np.searchsorted(LENGTH_BUCKETS, sizes, side="right")),
            "profile": profiles[users],
            "target": torch.from_numpy(targets),
        }

    def _item_text(self, items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Features (N, item_dim) of catalogue items: the frozen table, or the LoRA-tuned
        encoder run on their text (gradients flow into its adapters) and their categories."""
        if self.encoder is None:
            return text[items]
        unique, inverse = torch.unique(items, return_inverse=True)
        encoded = self._run_encoder(unique.cpu().numpy())
        return _item_features(encoded, self.item_categories[unique.cpu()])[inverse]

    # -- vocabularies, text and profiles ---------------------------------------------------

    def _build_vocabularies(self, data: InteractionData, warm_start: Recommender | None) -> None:
        frame = data.interactions
        self.user_vocab = Vocabulary(sorted(frame["user_id"].unique()))
        self.item_vocab = Vocabulary(sorted(frame["item_id"].unique()))
        tokens = sorted({t for a in self.attributes.values() for t in attribute_tokens(a)})
        self.token_vocab = Vocabulary(tokens)
        # (catalogue items,) vocabulary index of each catalogue item, 0 for never-seen ones
        self.item_id_index = self.item_vocab.lookup(self.item_ids)
        self.trained_items = np.flatnonzero(self.item_id_index)
        self.user_tokens = self._tokens(
            [self.attributes.get(u, {}) for u in self.user_vocab.ids]
        )  # (users, attributes)
        # The categories the item tower reads; a warm start keeps its model's, whose weights
        # have one input per category (a category it never met is left out).
        if warm_start is not None:
            assert isinstance(warm_start, TwoTower)
        kept = warm_start.category_names if warm_start is not None else None
        self.category_names, columns = category_columns(data.items, kept, self.config.categories)
        self.item_categories = torch.from_numpy(columns)

    def _tokens(self, attributes: list[dict[str, Any]]) -> np.ndarray:
        """(users, attributes) token indices, 0 where an attribute is missing or unknown."""
        out = np.zeros((len(attributes), len(ATTRIBUTES)), dtype=np.int64)
        for row, attrs in enumerate(attributes):
            found = [self.token_vocab.index.get(t, 0) for t in attribute_tokens(attrs)]
            out[row, : len(found)] = found
        return out

    def _set_item_features(self) -> None:
        """The table the towers read items from: text embedding, then category multi-hot."""
        self.item_features = _item_features(self.text, self.item_categories)

    @staticmethod
    def _item_texts(data: InteractionData) -> list[str]:
        return [item_text(row) for _, row in data.items.iterrows()]

    def _encode(self, texts: list[str]) -> np.ndarray:
        from training.text import encode

        c = self.config
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return encode(
            texts, c.text_model, cache_dir=c.text_cache_dir, device=str(self.device),
            show_progress=c.show_progress, int8=self.quantized,
        )  # fmt: skip

    def _set_profiles(self, data: InteractionData) -> None:
        """Profile text embeddings of the training users (zeros for those without)."""
        text_dim = self.text.shape[1]
        texts = [self.profile_texts.get(u) for u in self.user_vocab.ids]
        present = [i for i, t in enumerate(texts) if t]
        profiles = np.zeros((len(texts), text_dim), dtype=np.float32)
        self.profile_cache: dict[str, np.ndarray] = {}
        if present:
            vectors = self._encode([texts[i] for i in present])
            profiles[present] = vectors
            self.profile_cache = {texts[i]: v for i, v in zip(present, vectors, strict=True)}
        self.user_profiles = torch.from_numpy(profiles)

    # -- LoRA ------------------------------------------------------------------------------

    def _lora_encoder(self, device: str):
        """(tokenizer, the base text encoder wrapped with fresh LoRA adapters)."""
        from peft import LoraConfig, get_peft_model

        from training.text import load_encoder

        tokenizer, model = load_encoder(self.config.text_model, device)
        lora = LoraConfig(
            r=self.config.lora_rank, lora_alpha=2 * self.config.lora_rank,
            target_modules=["query", "value"], lora_dropout=0.0, bias="none",
        )  # fmt: skip
        return tokenizer, get_peft_model(model, lora)

    def _start_lora(self, data: InteractionData, warm_start: Recommender | None) -> None:
        """The encoder to tune: fresh adapters, or a warm start's (a LoRA model's) to go on."""
        self.tokenizer, self.encoder = self._lora_encoder(str(self.device))
        self.catalogue_texts = self._item_texts(data)
        adapters = getattr(warm_start, "lora_weights", None)
        if adapters is not None:
            assert isinstance(warm_start, TwoTower)
            if warm_start.config.text_model != self.config.text_model:
                raise ValueError(
                    f"warm_start: its adapters tune {warm_start.config.text_model!r}, this "
                    f"config's text_model is {self.config.text_model!r}"
                )
            _load_adapters(self.encoder, adapters, "warm_start")

    def _run_encoder(self, items: np.ndarray) -> torch.Tensor:
        from training.text import embed

        texts = [self.catalogue_texts[i] for i in items]
        return embed(self.tokenizer, self.encoder, texts, self.device)

    def _encode_with_adapters(self, texts: list[str]) -> np.ndarray:
        """(texts, text) embeddings of new items' texts by the encoder the model was trained
        with: the base encoder with the saved adapters merged in, built on first use (and in
        int8 once the model is quantised, as the frozen encoder is). Callers serialise their
        calls, as the service's text lock does: a fast tokenizer refuses two threads."""
        if self._tuned_encoder is None:
            device = "cpu" if self.quantized else str(self.device)
            tokenizer, encoder = self._lora_encoder(device)
            _load_adapters(encoder, self.lora_weights, "lora adapters")
            encoder = encoder.merge_and_unload().eval()
            if self.quantized:
                from training.quantization import int8_layers

                encoder = int8_layers(encoder)
            self._tuned_encoder = (tokenizer, encoder)
        tokenizer, encoder = self._tuned_encoder
        device = torch.device("cpu") if self.quantized else self.device
        return _embed_in_batches(tokenizer, encoder, texts, device)

    def _encode_tuned(self) -> np.ndarray:
        """The catalogue's text embeddings by the encoder being tuned, as fitting ends."""
        self.encoder.eval()
        return _embed_in_batches(self.tokenizer, self.encoder, self.catalogue_texts, self.device)

    # -- warm start ------------------------------------------------------------------------

    def _copy_weights(self, old: Recommender) -> None:
        """Start from a fitted model's weights: dense layers as they are, embedding rows
        mapped by id (ids only one of the two models knows keep their fresh rows)."""
        assert isinstance(old, TwoTower)
        if old.towers is None:
            raise ValueError("warm_start: the two_tower model given was never fitted")
        tables = {
            "users.user.weight": (old.user_vocab, self.user_vocab),
            "users.token.weight": (old.token_vocab, self.token_vocab),
            "users.history_item.weight": (old.item_vocab, self.item_vocab),
            "items.item.weight": (old.item_vocab, self.item_vocab),
            "items.item_bias.weight": (old.item_vocab, self.item_vocab),
        }
        old_state = old.towers.state_dict()
        new_state = self.towers.state_dict()
        for name, tensor in new_state.items():
            source = old_state[name].to(tensor.device)
            if source.shape[1:] != tensor.shape[1:] or (
                name not in tables and source.shape != tensor.shape
            ):
                raise ValueError(
                    f"warm_start: {name} has shape {tuple(source.shape)}, this config needs "
                    f"{tuple(tensor.shape)} (dim, hidden or the text model differ)"
                )
            if name in tables:
                old_vocab, new_vocab = tables[name]
                # Rows of the ids both know, "unknown" (row 0) included.
                new_rows, old_rows = shared_rows(old_vocab.to_list(), new_vocab.to_list())
                tensor[torch.from_numpy(new_rows)] = source[torch.from_numpy(old_rows)]
            else:
                tensor.copy_(source)
        self.towers.load_state_dict(new_state)

    # -- scoring ---------------------------------------------------------------------------

    @torch.inference_mode()
    def _precompute_items(self) -> None:
        """(items, dim + 1) item vectors with the bias as last column: score = u . v."""
        self.towers.eval()
        text = self.item_text_tuned if self.item_text_tuned is not None else self.text
        text = _item_features(text, self.item_categories).to(self.device)
        ids = torch.from_numpy(self.item_id_index).to(self.device)
        vectors, bias = self.towers.items(ids, text)  # (items, d), (items,)
        vectors = torch.cat([vectors, bias[:, None]], dim=1) / self.config.temperature
        self.item_vectors = vectors.cpu().numpy()

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        return self.user_vectors(users) @ self.item_vectors.T

    def _quantize(self, text_encoder: bool) -> bool:
        # Only the text encoders can go int8 (see _encode, _encode_with_adapters): they are the
        # transformers a request may run, on a new user's profile text or a new item's text.
        # The towers' layers and the item vectors are small enough that int8 would slow a
        # one-user call (training/quantization.py), so they stay float32. The int8 kernels
        # are CPU kernels.
        if not text_encoder:
            return False
        self.device = torch.device("cpu")
        self.towers.cpu()
        self._tuned_encoder = None  # rebuilt in int8 when next needed
        self._forget_texts()
        return True

    def item_embeddings(self) -> np.ndarray:
        return self.item_vectors[:, :-1]  # the last column is the bias

    def text_item_embeddings(
        self, texts: Sequence[str], categories: Sequence[Sequence[str]] | None = None
    ) -> np.ndarray:
        if not self.reads_item_text:
            raise NotImplementedError(NO_ADAPTERS)
        return self._text_item_vectors(texts, categories)[:, :-1]

    @property
    def reads_item_text(self) -> bool:
        # A LoRA-tuned model reads new text only with its adapters: with the untuned encoder
        # it would get vectors its item tower never learnt from. Versions registered before
        # the adapters were saved have none.
        return self.config.text_encoder == "frozen" or self.lora_weights is not None

    def score_texts(
        self, users: Sequence[UserQuery], texts: Sequence[str],
        categories: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """New items through the item tower as P2 trains it for items without interactions:
        the "unknown" id, the text embedding and the categories. An item whose text and
        categories equal a catalogue item's without interactions gets exactly that item's
        score."""
        if not self.reads_item_text:
            raise NotImplementedError(NO_ADAPTERS)
        vectors = self._text_item_vectors(texts, categories)
        return self.user_vectors([self.resolve(user) for user in users]) @ vectors.T

    @torch.inference_mode()
    def _text_item_vectors(
        self, given: Sequence[str], given_categories: Sequence[Sequence[str]] | None
    ) -> np.ndarray:
        """(texts, dim + 1) item vectors of new items, bias last, kept by (text, categories):
        the most recently met RECENT_ITEM_TEXTS, so a catalogue that keeps growing is not
        re-encoded per call and the service's memory stays bounded."""
        # The service asks for the same catalogue items on every request: stacking 2,000 kept
        # vectors and refreshing their order in the cache took 1.5 ms a call, so the last few
        # stacked lists are kept whole. The service passes the same tuples every time (its
        # NewItems): those are found by identity (tuples cannot change), anything else by
        # value, which costs building and hashing the keys (about 150 us for 2,000 items).
        last = self.last_stacked
        if last is not None and last[0] is given and last[1] is given_categories:
            return last[2]
        texts = _described(given, given_categories)
        key = tuple(texts)
        stacked = self.stacked_texts.get(key)
        if stacked is not None:
            self._remember_stacked(given, given_categories, stacked)
            return stacked
        recent = self.recent_item_texts
        missing = sorted({t for t in texts if t not in recent})
        if missing:
            self.towers.eval()
            plain = [text for text, _ in missing]
            encoded = (self._encode(plain) if self.lora_weights is None
                       else self._encode_with_adapters(plain))  # fmt: skip
            categories = multi_hot([names for _, names in missing], self.category_names)
            text = _item_features(torch.from_numpy(encoded), torch.from_numpy(categories))
            text = text.to(self.device)
            ids = torch.zeros(len(missing), dtype=torch.int64, device=self.device)
            vectors, bias = self.towers.items(ids, text)
            fresh = torch.cat([vectors, bias[:, None]], dim=1) / self.config.temperature
            recent.update(zip(missing, fresh.cpu().numpy(), strict=True))
        out = np.stack([recent[t] for t in texts]) if texts else np.zeros(
            (0, self.item_vectors.shape[1]), dtype=np.float32)  # fmt: skip
        for text in texts:
            recent.move_to_end(text)
        while len(recent) > RECENT_ITEM_TEXTS:
            recent.popitem(last=False)
        if len(texts) >= STACK_AT_LEAST:
            if len(self.stacked_texts) >= 4:
                self.stacked_texts.clear()
            self.stacked_texts[key] = out
            self._remember_stacked(given, given_categories, out)
        return out

    def _remember_stacked(self, texts, categories, out: np.ndarray) -> None:
        # Only tuples (of tuples): what the caller can change in place cannot be trusted by
        # identity.
        if isinstance(texts, tuple) and (
            categories is None
            or (isinstance(categories, tuple) and all(isinstance(c, tuple) for c in categories))
        ):
            self.last_stacked = (texts, categories, out)

    @torch.inference_mode()
    def user_vectors(self, users: list[ResolvedUser]) -> np.ndarray:
        """(users, dim + 1) vectors whose dot product with ``item_vectors`` is the score."""
        self.towers.eval()
        histories = [[self.item_index[i] for i in u.history if i in self.item_index] for u in users]
        sizes = np.array([len(h) for h in histories], dtype=np.int64)
        flat = torch.from_numpy(np.fromiter((i for h in histories for i in h), dtype=np.int64))
        batch = {
            "user": torch.from_numpy(self.user_vocab.lookup([u.user_id or "" for u in users])),
            "tokens": torch.from_numpy(self._tokens([u.attributes for u in users])),
            "history": flat,
            "history_ids": torch.from_numpy(self.item_id_index)[flat],
            "offsets": torch.from_numpy(np.cumsum(sizes) - sizes),
            "length": torch.from_numpy(np.searchsorted(LENGTH_BUCKETS, sizes, side="right")),
            "profile": torch.from_numpy(self._profiles([u.profile_text for u in users])),
        }
        batch = {k: v.to(self.device) for k, v in batch.items()}
        vectors = self.towers.users(batch, self.item_features.to(self.device)).cpu().numpy()
        return np.concatenate([vectors, np.ones((len(users), 1), np.float32)], axis=1)

    def _profiles(self, texts: list[str | None]) -> np.ndarray:
        """Profile text vectors: the training users' from ``profile_cache`` (saved with the
        model), any other text encoded now and kept among the RECENT_PROFILES most recently
        used, so that a service meeting new users for months holds a bounded number."""
        out = np.zeros((len(texts), self.text.shape[1]), dtype=np.float32)
        recent = self.recent_profiles
        missing = sorted({t for t in texts if t and t not in self.profile_cache
                          and t not in recent})  # fmt: skip
        fresh = dict(zip(missing, self._encode(missing), strict=True)) if missing else {}
        for row, text in enumerate(texts):
            if not text:
                continue
            vector = self.profile_cache.get(text)
            if vector is None:
                vector = fresh[text] if text in fresh else recent[text]
                recent[text] = vector
                recent.move_to_end(text)
            out[row] = vector
        while len(recent) > RECENT_PROFILES:
            recent.popitem(last=False)
        return out

    # -- save and load ---------------------------------------------------------------------

    def _state(self) -> dict[str, np.ndarray]:
        state = {
            f"towers.{name}": tensor.cpu().numpy()
            for name, tensor in self.towers.state_dict().items()
        }
        profile_texts = list(self.profile_cache)
        return {
            **state,
            "item_vectors": self.item_vectors,
            "text": self.text.numpy(),
            "user_vocab": np.array(self.user_vocab.to_list(), dtype=str),
            "item_vocab": np.array(self.item_vocab.to_list(), dtype=str),
            "token_vocab": np.array(self.token_vocab.to_list(), dtype=str),
            "category_names": np.array(self.category_names, dtype=str),
            "item_categories": self.item_categories.numpy(),
            "profile_texts": np.array(profile_texts, dtype=str),
            "profile_vectors": np.array(
                [self.profile_cache[t] for t in profile_texts], dtype=np.float32
            ).reshape(len(profile_texts), self.text.shape[1]),
            **{f"lora.{name}": value for name, value in (self.lora_weights or {}).items()},
        }

    def _load_state(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        del path
        # A model trained on a GPU still loads (and scores) where there is none.
        self.device = _device(self.config.device if torch.cuda.is_available() else "cpu")
        self.user_vocab = Vocabulary(arrays["user_vocab"].tolist())
        self.item_vocab = Vocabulary(arrays["item_vocab"].tolist())
        self.token_vocab = Vocabulary(arrays["token_vocab"].tolist())
        self.item_id_index = self.item_vocab.lookup(self.item_ids)
        self.trained_items = np.flatnonzero(self.item_id_index)
        self.text = torch.from_numpy(arrays["text"])
        # Versions saved before the item tower read categories have neither array.
        none = np.zeros((len(self.text), 0), dtype=np.float32)
        self.category_names = arrays.get("category_names", np.array([], dtype=str)).tolist()
        self.item_categories = torch.from_numpy(arrays.get("item_categories", none))
        self._set_item_features()
        self.item_vectors = arrays["item_vectors"]
        self.profile_cache = dict(
            zip(arrays["profile_texts"].tolist(), arrays["profile_vectors"], strict=True)
        )
        self.towers = Towers(
            len(self.user_vocab), len(self.item_vocab), len(self.token_vocab),
            self.text.shape[1], len(self.category_names), self.config,
        )  # fmt: skip
        self.towers.load_state_dict(
            {
                name.removeprefix("towers."): torch.from_numpy(value)
                for name, value in arrays.items()
                if name.startswith("towers.")
            }
        )
        self.towers.to(self.device).eval()
        lora = {name.removeprefix("lora."): value for name, value in arrays.items()
                if name.startswith("lora.")}  # fmt: skip
        self.lora_weights = lora or None


def _described(
    texts: Sequence[str], categories: Sequence[Sequence[str]] | None
) -> list[tuple[str, tuple[str, ...]]]:
    """(text, categories) per item: the key new items are encoded and kept by."""
    if categories is None:
        return [(text, ()) for text in texts]
    if len(categories) != len(texts):
        raise ValueError(
            f"categories: {len(categories)} lists for {len(texts)} texts (one per text)"
        )
    return [(text, tuple(names)) for text, names in zip(texts, categories, strict=True)]


def _item_features(text: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
    """(items, text + categories): what the item tower reads of an item, its text embedding
    and then its category multi-hot (the one place the two are joined)."""
    return torch.cat([text, categories.to(text.device, text.dtype)], dim=1)


def _embed_in_batches(tokenizer, encoder, texts: list[str], device, size: int = 64) -> np.ndarray:
    """(texts, text) embeddings (``training.text.embed``), ``size`` texts at a time."""
    from training.text import embed

    with torch.inference_mode():
        chunks = [embed(tokenizer, encoder, texts[s : s + size], device)
                  for s in range(0, len(texts), size)]  # fmt: skip
    return torch.cat(chunks).cpu().numpy()


def _load_adapters(encoder, adapters: dict[str, np.ndarray], what: str) -> None:
    """Put saved LoRA adapter weights into a peft-wrapped encoder, refusing any mismatch by
    name: peft's own loader is not strict, and would silently leave fresh adapters in place of
    weights it does not recognise (after a library upgrade renames them, say)."""
    from peft import set_peft_model_state_dict

    # peft's state dict names parameters without the adapter's name ("default").
    wanted = {name.replace(".default", ""): tuple(parameter.shape)
              for name, parameter in encoder.named_parameters() if "lora_" in name}  # fmt: skip
    given = {name: tuple(value.shape) for name, value in adapters.items()}
    if given != wanted:
        differ = sorted(set(given.items()) ^ set(wanted.items()))[:3]
        raise ValueError(
            f"{what}: the saved LoRA adapters do not fit this encoder (lora_rank or text_model "
            f"differ); first differences (name, shape): {differ}"
        )
    result = set_peft_model_state_dict(
        encoder, {name: torch.from_numpy(value) for name, value in adapters.items()}
    )
    if result.unexpected_keys:
        raise ValueError(f"{what}: peft did not load {result.unexpected_keys[:3]}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", disable=not enabled)
