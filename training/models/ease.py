"""EASE: Embarrassingly Shallow Autoencoders for sparse data (Steck, WWW 2019).

A closed-form item-item model: with X the users x items 0/1 matrix,
``B = I - P / diag(P)`` where ``P = (X^T X + lambda I)^-1``, and a user's scores are
``x_u B``. Any history folds in at request time (new users with a few interactions). Items
without training interactions get no score: ties among them break by popularity.

``dropout`` turns it into the full-rank DLAE of Steck (NeurIPS 2020, "Autoencoders that
don't overfit towards the identity"): training as if each input item were dropped with
probability p is, in closed form, a penalty ``p / (1 - p) * diag(X^T X)`` added to lambda,
item by item, and it needs no zero-diagonal constraint: ``B = I - P Lambda`` with
``P = (X^T X + Lambda)^-1``. Popular items are held back harder than ridge alone holds them.
On MovieLens-100K (P1) it adds about 1% NDCG@10 to EASE (0.4824 -> 0.4875). Its diagonal
(an item's weight on itself) is set to 0 as EASE's is: it only ever scores items the user
has seen.

``lambda`` and ``dropout`` (0 is EASE) are tuned together on a validation split carved out
of the training data (a random 10% of each user's interactions, ``protocols.validation``, the
split the two-stage blend's weight is tuned on) unless the config fixes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data import InteractionData
from training.models.base import Recommender, ResolvedUser

DEFAULT_L2 = 300.0  # the reference "ease_plain" of the quality benchmark
SPARSE_USERS = 8  # up to this many users per call, scores sum weight rows (see _score)


@dataclass
class EaseConfig:
    l2: float | None = None  # lambda; None: tune over l2_grid on a validation split
    l2_grid: tuple[float, ...] = (50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0)
    dropout: float | None = None  # DLAE's p in [0, 1); 0: EASE; None: tune over dropout_grid
    dropout_grid: tuple[float, ...] = (0.0, 0.5, 0.67)
    validation_share: float = 0.1  # of each user's interactions, for tuning
    max_items: int = 40_000  # B is items x items floats: refuse what would not fit in memory
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("l2_grid", "dropout_grid"):
            if not getattr(self, name):
                raise ValueError(f"ease config: {name} is empty (give at least one value)")
        for name, values in (("dropout", [self.dropout]), ("dropout_grid", self.dropout_grid)):
            for value in values:
                if value is not None and not (isinstance(value, int | float) and 0 <= value < 1):
                    raise ValueError(
                        f"ease config: {name}={value!r} is invalid "
                        "(expected a probability in [0, 1); 0 is plain EASE)"
                    )


class Ease(Recommender):
    kind = "ease"

    @classmethod
    def default_config(cls) -> EaseConfig:
        return EaseConfig()

    def _fit(self, data: InteractionData, warm_start: Recommender | None) -> None:
        # Closed form: there is nothing to continue from, a warm start refits on the data given
        # (keeping the champion's tuned lambda and dropout, which is what made it the champion).
        if warm_start is not None:
            if self.config.l2 is None:
                self.config.l2 = warm_start.config.l2
            if self.config.dropout is None:
                self.config.dropout = warm_start.config.dropout
        n_items = len(self.item_ids)
        if n_items > self.config.max_items:
            raise ValueError(
                f"ease: {n_items} items exceed config.max_items={self.config.max_items} "
                "(B is a dense items x items matrix)"
            )
        if self.config.l2 is None or self.config.dropout is None:
            self.config.l2, self.config.dropout = self._tune(data)
        self.weights = self._solve(self._matrix(data), self.config.l2, self.config.dropout)

    def _matrix(self, data: InteractionData) -> np.ndarray:
        users = {u: r for r, u in enumerate(data.interactions["user_id"].unique())}
        x = np.zeros((len(users), len(self.item_ids)), dtype=np.float64)
        rows = data.interactions["user_id"].map(users).to_numpy()
        columns = data.interactions["item_id"].map(self.item_index).to_numpy()
        x[rows, columns] = 1.0
        return x

    @staticmethod
    def _solve(x: np.ndarray, l2: float, dropout: float) -> np.ndarray:
        gram = x.T @ x
        penalty = l2 + dropout / (1.0 - dropout) * np.diag(gram)
        gram[np.diag_indices_from(gram)] += penalty
        precision = np.linalg.inv(gram)
        if dropout == 0.0:  # EASE: the zero-diagonal constraint's Lagrange solution
            weights = precision / (-np.diag(precision))
        else:  # DLAE: I - P Lambda, whose identity part the zeroed diagonal drops
            weights = precision * (-penalty)[None, :]
        weights[np.diag_indices_from(weights)] = 0.0
        return weights.astype(np.float32)

    def _tune(self, data: InteractionData) -> tuple[float, float]:
        """The (lambda, dropout) with the best validation NDCG@10 among the free ones' grids,
        on the same validation split as the other kinds tune on (``protocols.validation``)."""
        from training.metrics import ndcg_at_k
        from training.protocols import validation

        split = validation(data, self.config.validation_share, self.config.seed)
        if not len(split):
            # Too few interactions per user to hold any out: Steck's default for ML-size data.
            chosen = (
                self.config.l2 if self.config.l2 is not None else DEFAULT_L2,
                self.config.dropout if self.config.dropout is not None else 0.0,
            )
            self.tuning = {"l2": chosen[0], "dropout": chosen[1], "validation_ndcg@10": None}
            return chosen
        x = self._matrix(split.train)
        row_of = {u: r for r, u in enumerate(split.train.interactions["user_id"].unique())}
        rows = np.array([row_of[query.user_id] for query in split.queries])
        relevant = np.zeros((len(rows), len(self.item_ids)), dtype=bool)
        for row, items in enumerate(split.relevant):
            relevant[row, [self.item_index[item] for item in items]] = True
        queried = x[rows]  # the validation users' training rows, scored at every grid point
        l2s = [self.config.l2] if self.config.l2 is not None else self.config.l2_grid
        dropouts = (
            [self.config.dropout] if self.config.dropout is not None else self.config.dropout_grid
        )
        best, chosen = -1.0, (l2s[0], dropouts[0])
        for dropout in dropouts:
            for l2 in l2s:
                scores = (queried @ self._solve(x, l2, dropout)).astype(np.float64)
                scores[queried > 0] = -np.inf
                value = ndcg_at_k(scores, relevant, 10)
                if value > best:
                    best, chosen = value, (l2, dropout)
        self.tuning = {"l2": chosen[0], "dropout": chosen[1], "validation_ndcg@10": best}
        return chosen

    def _score(self, users: list[ResolvedUser]) -> np.ndarray:
        if len(users) > SPARSE_USERS and not self.quantized:
            return self.history_matrix(users) @ self.weights + self.popularity_prior()
        # A request's few users (or int8 weights, which have no fast dense product in numpy):
        # sum the rows of the items each has seen. It reads tens of rows, where the dense
        # product reads the whole items x items matrix (11 MB on MovieLens-100K) per call.
        # Same scores, summed in another order.
        rows, kind = (self.int8_rows, np.int32) if self.quantized else (self.weights, np.float32)
        scores = np.zeros((len(users), len(self.item_ids)), dtype=np.float32)
        for row, user in enumerate(users):
            seen = self.history_columns(user.history)
            if len(seen):
                scores[row] = rows[seen].sum(axis=0, dtype=kind)
        if self.quantized:
            scores *= self.int8_scale
        return scores + self.popularity_prior()

    def _quantize(self, text_encoder: bool) -> bool:
        from training.quantization import int8_rows

        del text_encoder  # EASE reads no text

        # Scores are history @ weights: each column (one item's score) gets its own int8
        # scale, and the int8 rows (item -> what it adds to every score) serve the row sums
        # above. The float table goes: holding a quarter of its memory is what int8 is for.
        values, self.int8_scale = int8_rows(self.weights.T)
        self.int8_rows = np.ascontiguousarray(values.T)
        del values, self.weights
        return True

    def item_embeddings(self) -> np.ndarray:
        # Row i: how much item i speaks for every other item; alike items have alike rows.
        if self.quantized:  # rebuilt from int8 (the service computes it once per version)
            return self.int8_rows * self.int8_scale
        return self.weights

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    def _load_state(self, path, arrays) -> None:
        self.weights = arrays["weights"]
