"""Off-policy evaluation of registered models on the champion's logged slates.

The question: had a candidate model (the challenger, or any registered version) served the
requests the champion served this hour, what would its CTR have been? The target policy is
the candidate served greedily: for each logged request, its top k for the same user and
context, so pi_k(a|x) is 1 for its item in slot k and 0 elsewhere. The logging policy's
per-slot marginal propensity is in every impression.

The doubly robust estimator needs a reward model. ``PositionBasedModel`` is the position-based
click model r(a, k) = examination(k) * attractiveness(a), fitted from the same log with
add-m smoothing, and cross-fitted over two halves of the requests (each half's predictions
come from the model fitted on the other half), so no click predicts itself.

Examination and attractiveness are fitted jointly, not examination from each slot's CTR: the
champion puts its best items on top, so slot 0's CTR is high for the item as much as for the
slot, and a ratio of slot CTRs reads examination far too steep. Every item of the champion's
top then looks more attractive than it is, and a candidate that moves one up is credited with
clicks it would not get (measured on a simulated epsilon-greedy log: the ratio put the
champion's items 2-10 at 0.69 in slot 0 where they click at 0.47; the joint fit at 0.48).
The joint fit alternates the two closed-form updates (each the other's maximum likelihood
under a Poisson approximation of the clicks, iterative proportional fitting) until they
settle; the exploration's draws, which show items in slots their rank would not give them,
are what separate the two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.constants import USER_ACTIVITY_TTL
from monitoring.estimators import (
    bootstrapped,
    cluster_codes,
    confidence_sequence,
    doubly_robust,
    doubly_robust_difference,
    doubly_robust_gain,
    exposure,
    exposure_weights,
    ips,
    position_based_support,
    snips,
    support,
)

STRENGTH = 20.0  # pseudo-impressions that shrink an item's attractiveness towards the mean
# The least examination a slot is given, harvested or fitted: a slot with impressions but no
# click in a fold reads 0, and an exposure of 0 makes a position-based weight infinite.
EXAMINATION_FLOOR = 1e-3


@dataclass(frozen=True)
class PositionBasedModel:
    examination: np.ndarray  # (slots,): slot 0 = 1
    attractiveness: dict[str, float]
    default: float  # for an item never shown in the fitting data

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        strength: float = STRENGTH,
        iterations: int = 100,
        examination: np.ndarray | None = None,
    ) -> PositionBasedModel:
        """Examination and attractiveness fitted jointly (module docstring), starting from
        each slot's CTR relative to slot 0. Each item's attractiveness is its clicks over its
        examination-weighted impressions; each slot's examination its clicks over its
        impressions' attractiveness, relative to slot 0's. Once they settle, attractiveness
        is shrunk towards the mean by ``strength`` pseudo-impressions. Examination is kept
        within [``EXAMINATION_FLOOR``, 1], as the harvested one is: a slot shown in but
        never clicked in reads 0 otherwise.

        ``examination`` given (``harvested_examination``'s) is kept as it is, and only the
        attractiveness is fitted to it."""
        if examination is not None:
            iterations = 0
        positions = frame["position"].to_numpy(dtype=np.int64)
        clicks = frame["clicked"].to_numpy(dtype=np.float64)
        codes, items = pd.factorize(frame["item_id"])
        slots = int(positions.max()) + 1 if len(positions) else 1
        shown = np.bincount(positions, minlength=slots).astype(np.float64)
        clicked = np.bincount(positions, weights=clicks, minlength=slots)
        overall = (clicked.sum() + 1.0) / (shown.sum() + 2.0)
        slot_ctr = (clicked + strength * overall) / (shown + strength)
        # A harvested examination is kept, past its slots examined like its last.
        if examination is None:
            examination = slot_ctr / slot_ctr[0]
        else:
            examination = padded_examination(examination, slots)
        item_clicks = np.bincount(codes, weights=clicks, minlength=len(items))
        for _ in range(iterations):
            # Unshrunk while fitting: shrinking the explored items' rates towards the mean
            # (each has few examination-weighted impressions) would bend the slots' estimates.
            expected = examination[positions]
            attractiveness = item_clicks / np.maximum(
                np.bincount(codes, weights=expected, minlength=len(items)), 1e-12
            )
            # A slot nobody was shown in keeps its start (0 / 0 says nothing about it).
            exposure = np.bincount(positions, weights=attractiveness[codes], minlength=slots)
            updated = np.where(exposure > 0, clicked / np.maximum(exposure, 1e-12), slot_ctr)
            updated = updated / updated[0] if updated[0] > 0 else examination
            settled = np.abs(updated - examination).max() < 1e-7
            examination = updated
            if settled:
                break
        # Floored as the harvest floors it: under greedy serving (no shared part to harvest)
        # this fit is the position-based weights' examination, and a slot read at 0 gives
        # its items a logged exposure of 0. Floored before the attractiveness is fitted to
        # it, so that a refit to the same examination (``_Rewards``) predicts the same.
        examination = np.clip(examination, EXAMINATION_FLOOR, 1.0)
        attractiveness, default = shrunk_attractiveness(
            codes, clicks, examination[positions], len(items), strength
        )
        return cls(examination, dict(zip(items, attractiveness.tolist(), strict=True)), default)

    def predict(self, item_ids: Sequence[str], positions: Sequence[int]) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        last = len(self.examination) - 1
        exam = self.examination[np.minimum(positions, last)]
        attract = np.array([self.attractiveness.get(i, self.default) for i in item_ids])
        return np.clip(exam * attract, 0.0, 1.0)


def shrunk_attractiveness(
    codes: np.ndarray, clicks: np.ndarray, expected: np.ndarray, size: int, strength: float
) -> tuple[np.ndarray, float]:
    """Each item's (codes 0 .. size - 1) clicks over its examination-weighted impressions
    (``expected``: each impression's examination), shrunk towards the overall rate by
    ``strength`` pseudo-impressions; and that rate, the attractiveness of an item never shown.
    Both at most 1. ``PositionBasedModel.fit`` ends with it, and the position-based doubly
    robust bootstrap refits with it (``_Rewards``)."""
    default = float(clicks.sum() / max(expected.sum(), 1e-12))
    attractiveness = (np.bincount(codes, weights=clicks, minlength=size) + strength * default) / (
        np.bincount(codes, weights=expected, minlength=size) + strength
    )
    return np.clip(attractiveness, 0.0, 1.0), min(default, 1.0)


def _fold(request_id: str) -> int:
    return hashlib.blake2b(request_id.encode(), digest_size=1).digest()[0] & 1


def harvested_examination(
    positions: np.ndarray,
    clicks: np.ndarray,
    slots: np.ndarray,
    weights: np.ndarray | None = None,
    floor: float = EXAMINATION_FLOOR,
) -> np.ndarray | None:
    """Each slot's examination relative to slot 0, from the per-slot propensities, unconfounded
    by which items the logging policy puts where; None where the log cannot say.

    A joint fit of examination and attractiveness reads a slot's examination from its clicks,
    and a logging policy that puts each user's likeliest items on top makes slot 0 look more
    examined than it is (on the OPE benchmark's Plackett-Luce logs the joint fit read slot 9
    at 0.06 where the truth is 0.10, and the position-based estimates came out 6% high).
    Here every slot is given the same counterfactual item distribution instead: each item's
    smallest probability over the slate's slots, min_j mu(a, j), the part of the logging
    policy that could put any item in any slot (for epsilon-greedy, its uniform exploration).
    The importance-weighted clicks of slot k, sum c * min_j mu(a, j) / mu(a, k) (weights at
    most 1), estimate examination(k) times the same mean attractiveness for every k, so their
    ratio to slot 0's is the examination (intervention harvesting, in the spirit of Agarwal
    et al. 2019, "Estimating position bias without intrusive interventions"). A log without
    such a shared part (greedy serving) gives slot 0 no weighted click, hence None, and the
    caller falls back to the joint fit (``cross_fit``), floored the same way.

    One row per impression: its slot, click and per-slot propensities (NaN past a short
    slate's end); ``weights`` (per impression, a bootstrap's) multiply the clicks."""
    positions = np.asarray(positions, dtype=np.int64)
    clicks = np.asarray(clicks, dtype=np.float64)
    if weights is not None:
        clicks = clicks * weights
    return _harvest(positions, clicks, _shared_part(positions, slots), slots.shape[1], floor)


def _shared_part(positions: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Per impression, min_j mu(a, j) / mu(a, k): the weight that moves its click to the
    shared item distribution (``harvested_examination``)."""
    own = slots[np.arange(len(positions)), positions]
    return np.nanmin(slots, axis=1) / own  # over the slate's own slots: NaN pads a short one


def _harvest(
    positions: np.ndarray,
    clicks: np.ndarray,
    shared: np.ndarray,
    width: int,
    floor: float = EXAMINATION_FLOOR,
) -> np.ndarray | None:
    """``harvested_examination`` from each impression's (weighted) click and shared-part
    weight: the bootstrap calls it once per replicate and fold."""
    weighted = np.bincount(positions, weights=clicks * shared, minlength=width)
    if weighted[0] <= 0:
        return None
    # Examination does not rise down the slate: the projection onto non-increasing sequences
    # (scipy's pool-adjacent-violators, weighted by each slot's harvested clicks) takes out
    # much of the slots' noise.
    from scipy.optimize import isotonic_regression

    counts = np.bincount(positions, weights=clicks * (shared > 0), minlength=width)
    ratio = weighted[:width] / weighted[0]
    fitted = isotonic_regression(
        ratio, weights=np.maximum(counts[:width], 1e-9), increasing=False
    ).x
    return np.clip(fitted / fitted[0], floor, 1.0)


def cross_fit(
    rows: pd.DataFrame, folds: np.ndarray, slots: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[np.ndarray, PositionBasedModel]]]:
    """Two-fold cross-fitting of the reward model: each fold's predictions for its logged
    items come from the model fitted on the other fold. Returns those predictions and, per
    fold, (its rows' mask, the model to use for them). With ``slots`` (the per-slot
    propensities, ``_slot_propensities``) the examination is ``harvested_examination``'s
    where the log has a shared part to harvest, and the joint fit's otherwise (greedy
    serving, the default: every item logged in one slot with propensity 1); either is at
    least ``EXAMINATION_FLOOR``."""
    predicted = np.zeros(len(rows))
    positions = rows["position"].to_numpy()
    items = rows["item_id"].to_numpy()
    fitted = []
    for fold in (0, 1):
        mine = folds == fold
        train = _fitted_on(mine)
        examination = None if slots is None else harvested_examination(
            positions[train], rows["clicked"].to_numpy()[train], slots[train])  # fmt: skip
        model = PositionBasedModel.fit(rows[train], examination=examination)
        predicted[mine] = model.predict(items[mine], positions[mine])
        fitted.append((mine, model))
    return predicted, fitted


def _fitted_on(mine: np.ndarray) -> np.ndarray:
    """The rows a fold's model is fitted on: the other fold's, or every row where the other
    fold is empty (a log of one request)."""
    others = ~mine
    return others if others.any() else np.ones(len(mine), dtype=bool)


def _target(rows: pd.DataFrame, slates: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """A greedy target's pi_k(a|x) for each logged impression (1 when its slate holds the
    logged item in the logged slot) and its own item for each slot ("" when its slate is
    shorter than the slot)."""
    items = np.array(
        [
            slate[p] if p < len(slate) else ""
            for slate, p in zip(
                (slates[r] for r in rows["request_id"]), rows["position"], strict=True
            )
        ],
        dtype=object,
    )
    return (items == rows["item_id"].to_numpy()).astype(np.float64), items


def cut_to_logged_lengths(
    rows: pd.DataFrame, targets: dict[str, dict[str, list[str]]]
) -> dict[str, dict[str, list[str]]]:
    """Each target's slate for each logged request (``rows``' requests, every one in each
    target's slates) cut to the request's own logged length, its largest logged slot + 1.

    The slate size k is per request (the service's schema takes it from each request), and
    a target serving a request would show that many items: one it ranks below them is not
    shown at all. Left longer, the slate would give such an item the examination of a slot
    the request never had, and the position-based weights would credit the target with its
    clicks elsewhere in the slate (item-position weights only read the logged slots)."""
    lengths = (rows.groupby("request_id", sort=False)["position"].max() + 1).to_dict()
    return {name: {request: slates[request][: int(size)] for request, size in lengths.items()}
            for name, slates in targets.items()}  # fmt: skip


def _slot_propensities(rows: pd.DataFrame) -> np.ndarray | None:
    """(impressions, slots): each logged item's propensity in every slot of its slate, NaN
    past a short slate's end; None when any impression was logged without them (events
    older than the field), since a position-based weight needs every one."""
    if "slot_propensities" not in rows:
        return None
    values = rows["slot_propensities"].tolist()
    if any(not isinstance(v, list | np.ndarray) for v in values):
        return None
    width = max((len(v) for v in values), default=0)
    matrix = np.full((len(values), width), np.nan)
    for row, v in enumerate(values):
        matrix[row, : len(v)] = v
    return matrix


# Poisson bootstrap replicates behind the position-based intervals (their examination is
# fitted from the same log, and a fixed-examination interval would leave that noise out).
REPLICATES = 100


@dataclass(frozen=True)
class _Fold:
    """One cross-fitting fold of the position-based weights: its impressions (``mine``), their
    per-slot propensities (0 past a short slate's end), and the other fold's impressions'
    slot, click and shared-part weight that its examination is harvested from."""

    mine: np.ndarray
    slots: np.ndarray
    train: np.ndarray
    positions: np.ndarray
    clicks: np.ndarray
    shared: np.ndarray


@dataclass(frozen=True)
class PositionBased:
    """The position-based weights of one log (``estimators.exposure``): per cross-fitting
    fold, the examination of every slot harvested from the other fold (``theta``), and what
    a bootstrap replicate needs to harvest it again."""

    folds: list[_Fold]
    theta: list[np.ndarray]  # per fold, (slots,)
    positions: np.ndarray
    slots: np.ndarray  # (impressions, slots), NaN past a short slate's end

    @classmethod
    def of(cls, rows: pd.DataFrame, fitted: list, slots: np.ndarray) -> PositionBased:
        positions = rows["position"].to_numpy(dtype=np.int64)
        clicks = rows["clicked"].to_numpy(dtype=np.float64)
        shared = _shared_part(positions, slots)
        width = max(slots.shape[1], 1)
        folds, theta = [], []
        for mine, model in fitted:
            train = _fitted_on(mine)  # the rows cross_fit fitted this fold's model on
            folds.append(_Fold(mine, np.nan_to_num(slots[mine]), train, positions[train],
                               clicks[train], shared[train]))  # fmt: skip
            theta.append(padded_examination(model.examination, width))
        return cls(folds, theta, positions, slots)

    def examination(self, weights: np.ndarray | None = None) -> list[np.ndarray]:
        """Each fold's examination of every slot: the cross-fitted one, or with ``weights``
        (per impression, a bootstrap replicate's) harvested again from the reweighted other
        fold (a fold whose harvest fails keeps its own)."""
        if weights is None:
            return self.theta
        theta = []
        for fold, own in zip(self.folds, self.theta, strict=True):
            harvested = _harvest(fold.positions, fold.clicks * weights[fold.train], fold.shared,
                                 len(own))  # fmt: skip
            theta.append(own if harvested is None else harvested[: len(own)])
        return theta

    def logged(self, theta: list[np.ndarray]) -> np.ndarray:
        """The logging policy's exposure of each logged item."""
        out = np.empty(len(self.positions))
        for fold, examination in zip(self.folds, theta, strict=True):
            out[fold.mine] = exposure(examination, fold.slots)
        return out

    def target(self, theta: list[np.ndarray], where: np.ndarray) -> np.ndarray:
        """A greedy target's exposure of each logged item (``where``: ``slot_in``'s): the
        examination of the slot its slate puts the item in (slots past those fitted examined
        like the last), 0 where its slate does not hold the item."""
        out = np.zeros(len(where))
        for fold, examination in zip(self.folds, theta, strict=True):
            at = where[fold.mine]
            out[fold.mine] = np.where(
                at >= 0, examination[np.minimum(np.maximum(at, 0), len(examination) - 1)], 0.0
            )
        return out

    def examined(self) -> np.ndarray:
        """Each impression's slot examination over its slate's mean examination."""
        out = np.empty(len(self.positions))
        for fold, examination in zip(self.folds, self.theta, strict=True):
            slots = self.slots[fold.mine]
            mean = np.nanmean(np.where(np.isnan(slots), np.nan, examination[None, :]), axis=1)
            own = examination[np.minimum(self.positions[fold.mine], len(examination) - 1)]
            out[fold.mine] = own / mean
        return out

    @staticmethod
    def slot_in(rows: pd.DataFrame, slates: dict[str, list[str]]) -> np.ndarray:
        """Where a greedy target's slate puts each logged item (-1: nowhere)."""
        slot_of = {r: {item: k for k, item in enumerate(slates[r])}
                   for r in rows["request_id"].unique()}  # fmt: skip
        return np.array([slot_of[r].get(i, -1) for r, i in zip(
            rows["request_id"], rows["item_id"], strict=True)])  # fmt: skip


@dataclass(frozen=True)
class _Rewards:
    """The cross-fitted reward model again, refitted under a bootstrap replicate's weights:
    the position-based doubly robust estimate's interval needs the model refitted with the
    examination it rests on (``_position_based_estimates``). Items are codes into one list
    of the logged items and the targets' (a target's slot past its slate's end: the code
    ``items``, whose attractiveness is 0). Per cross-fitting fold (``PositionBased.folds``):
    the codes of the items its model is fitted on, and of its own impressions' logged items
    and each target's item in their slots, with those impressions' slots."""

    items: int
    folds: list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]]

    @classmethod
    def of(
        cls, rows: pd.DataFrame, target_items: dict[str, np.ndarray], weights: PositionBased
    ) -> _Rewards:
        logged_items = rows["item_id"].to_numpy(dtype=object)
        known = pd.Index(pd.unique(np.concatenate([logged_items, *target_items.values()])))
        logged = known.get_indexer(logged_items)
        targets = {name: np.where(items != "", known.get_indexer(items), len(known))
                   for name, items in target_items.items()}  # fmt: skip
        folds = [
            (logged[fold.train], logged[fold.mine], weights.positions[fold.mine],
             {name: codes[fold.mine] for name, codes in targets.items()})
            for fold in weights.folds
        ]  # fmt: skip
        return cls(len(known), folds)

    def predict(
        self, weights: PositionBased, theta: list[np.ndarray], w: np.ndarray | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per impression, the click probability of its logged item and of each target's item
        in its slot, from the model fitted on the other fold, as ``PositionBasedModel.fit``
        fits it to a given examination: each item's clicks over its examination-weighted
        impressions, shrunk towards the mean; ``w`` (a replicate's) weights both. (Every
        slot is within ``theta``'s: it is padded to the widest slate's.)"""
        predicted = np.empty(len(weights.positions))
        direct = {name: np.empty(len(weights.positions)) for name in self.folds[0][3]}
        for fold, examination, (fitted_on, logged, positions, targets) in zip(
            weights.folds, theta, self.folds, strict=True
        ):
            clicks = fold.clicks if w is None else fold.clicks * w[fold.train]
            expected = examination[fold.positions]
            if w is not None:
                expected = expected * w[fold.train]
            attractiveness, _ = shrunk_attractiveness(
                fitted_on, clicks, expected, self.items + 1, STRENGTH
            )
            attractiveness[self.items] = 0.0  # no item: no click
            exam = examination[positions]
            predicted[fold.mine] = np.minimum(exam * attractiveness[logged], 1.0)
            for name, codes in targets.items():
                direct[name][fold.mine] = np.minimum(exam * attractiveness[codes], 1.0)
        return predicted, direct


def padded_examination(examination: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` slots' examination, slots past those fitted examined like the last."""
    head = np.asarray(examination, dtype=np.float64)[:width]
    return np.concatenate([head, np.repeat(head[-1:], width - len(head))])


def _direct(fitted: list, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The reward model's click probability of the target's own item in each slot (0 where
    the target has none): pi is deterministic, so that is the DR estimator's direct term."""
    direct = np.zeros(len(items))
    for mine, model in fitted:
        direct[mine] = model.predict(items[mine], positions[mine])
    return direct * (items != "")


WEIGHTS = ("item_position", "position_based")
# The CTR estimate each kind of weights stands behind, and what the gate's words call it.
ESTIMATE_OF = {"item_position": "dr", "position_based": "pbm_ips"}
LABEL = {"item_position": "doubly robust", "position_based": "position-based IPS"}


def label(numbers: dict[str, Any]) -> str:
    """The name, in words, of the estimator behind a gate's numbers (``gate_estimates``)."""
    return LABEL["position_based" if numbers.get("position_based") else "item_position"]


def compare(
    frame: pd.DataFrame,
    targets: dict[str, dict[str, list[str]]],
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    weights: str = "item_position",
) -> dict[str, Any]:
    """IPS, SNIPS and doubly robust estimates of several greedy targets (name -> each
    request's slate) on the same impressions, with one cross-fitted reward model, and each
    one's paired doubly robust gain: over the target named ``baseline``, or, when None, over
    the clicks the logging policy actually got.

    ``frame`` is the logging policy's impressions (``monitoring.logs.impressions``); only the
    requests every target has a slate for are used, and the others are counted. Each slate
    is cut to its request's logged length (``cut_to_logged_lengths``).

    Where every impression carries its per-slot propensities, the position-based IPS estimate
    (``pbm_ips``: ``estimators.exposure``, ``_position_based_estimates``) joins the
    item-position ones. ``weights`` picks which weights the gain and the support use:
    ``position_based`` (its gain is the position-based IPS one, ``pbm_ips_gain`` or
    ``pbm_ips_difference``) needs those propensities, and without them the item-position
    weights are used; the result's ``weights`` says which were.
    """
    if baseline is not None and baseline not in targets:
        raise ValueError(f"baseline: {baseline!r} is not one of the targets")
    if weights not in WEIGHTS:
        raise ValueError(f"weights: {weights!r} is not one of {', '.join(WEIGHTS)}")
    request_ids = frame["request_id"]
    covered = np.ones(len(frame), dtype=bool)
    for slates in targets.values():
        covered &= request_ids.isin(slates.keys()).to_numpy()
    rows = frame[covered]
    result: dict[str, Any] = {"impressions": len(rows), "uncovered": int((~covered).sum())}
    if rows.empty:
        return {**result, "targets": {}, "weights": weights}
    targets = cut_to_logged_lengths(rows, targets)
    logged = rows["propensity"].to_numpy(dtype=np.float64)
    clicks = rows["clicked"].to_numpy(dtype=np.float64)
    slate_ids = rows["request_id"].to_numpy()
    # The intervals cluster by user, not by slate: a user's slates share a taste, so their
    # terms are alike, and the promotion is for the users, whom the traffic split assigns
    # too (estimators.clustered_ctr says why for the CTR). Each user is one cluster, coded
    # once here for every estimator and the bootstrap.
    users = cluster_codes(rows["user_id"])
    positions = rows["position"].to_numpy()
    slot_matrix = _slot_propensities(rows)
    predicted, fitted = cross_fit(rows, np.array([_fold(r) for r in slate_ids]), slot_matrix)
    position_based = None if slot_matrix is None else PositionBased.of(rows, fitted, slot_matrix)
    used = weights if position_based is not None else "item_position"
    arrays, unlogged, target_items = {}, {}, {}
    shown = set(rows["item_id"])
    for name, slates in targets.items():
        target, items = _target(rows, slates)
        where = None if position_based is None else PositionBased.slot_in(rows, slates)
        arrays[name] = (target, _direct(fitted, items, positions), where, items != "")
        target_items[name] = items
        has = items != ""
        unlogged[name] = float(np.mean([i not in shown for i in items[has]])) if has.any() else 0.0
    if position_based is not None:
        rewards = _Rewards.of(rows, target_items, position_based)
        pbm = _position_based_estimates(position_based, rewards, arrays, clicks, users,
                                         baseline, alpha)  # fmt: skip
        # The logging policy's exposures and each slot's relative examination are the same
        # for every target: the support of each reads them.
        exposed = position_based.logged(position_based.theta)
        examined = position_based.examined()

    per_target = {}
    for name, (target, direct, where, has) in arrays.items():
        model = {"predicted": predicted, "direct": direct, "alpha": alpha}
        if used == "position_based":
            gain = pbm[name]["gain"]
        elif baseline is None:
            gain = doubly_robust_gain(clicks, logged, target, users, **model)
        else:
            gain = doubly_robust_difference(clicks, logged, target, arrays[baseline][0],
                                            users, baseline_direct=arrays[baseline][1],
                                            **model)  # fmt: skip
        if not has.any():
            supported = None
        elif used == "position_based":
            supported = position_based_support(
                exposed[has], position_based.target(position_based.theta, where)[has],
                examined[has], users[has], alpha)  # fmt: skip
        else:
            supported = support(logged[has], target[has], users[has], alpha)
        estimates = {
            "ips": ips(clicks, logged, target, users, alpha),
            "snips": snips(clicks, logged, target, users, alpha),
            "dr": doubly_robust(clicks, logged, target, users, **model),
        }
        if position_based is not None:
            estimates["pbm_ips"] = pbm[name]["pbm_ips"]
            estimates["pbm_dr"] = pbm[name]["pbm_dr"]
        per_target[name] = {
            # Impressions that speak for the target: the same item in the same slot, or
            # under position-based weights the same item anywhere in its slate.
            "matches": int((where >= 0).sum() if used == "position_based" else target.sum()),
            # The share of the target's slots whose item the log never showed: the logging
            # policy's support likely misses it (its exploring pool is the champion's top
            # serving.candidates), so only the reward model speaks for those slots, and the
            # estimate's interval does not cover that model's error.
            "unlogged_share": unlogged[name],
            # The mean importance weight over the slots the target fills (about 1 when the
            # log can see what the target shows; estimators.support): where its upper bound
            # falls short of 1, the target's items are too rarely logged in its slots for
            # the intervals to hold, however narrow they look.
            "support": supported,
            "estimates": estimates,
            "gain": gain,
            "target": target,
        }
    return {**result, "targets": per_target, "logged": logged, "clicks": clicks,
            "weights": used}  # fmt: skip


def _position_based_estimates(
    weights: PositionBased,
    rewards: _Rewards,
    arrays: dict[str, tuple],
    clicks: np.ndarray,
    groups: np.ndarray,
    baseline: str | None,
    alpha: float,
) -> dict[str, dict[str, Any]]:
    """Per target, the position-based IPS and doubly robust values, and the IPS one's paired
    gain (over ``baseline``'s, or over the logged clicks), each with a Poisson bootstrap
    interval that refits the examination in every replicate (``estimators.bootstrapped``),
    and for the doubly robust value the reward model on it too. One pass over the replicates
    serves every target: the logging policy's exposures are computed once each.
    ``groups``: each impression's cluster (its user), the bootstrap's resampled unit.

    The doubly robust value (Li et al. 2018, "Offline evaluation of ranking policies with
    click models", with Dudik et al.'s correction): the reward model's clicks for the
    target's slate, plus each logged click's residual from the model, weighted by the target's
    exposure of its item over the logging policy's. Under the position-based click model
    the correction's expectation is the model's error on the target's items, so the value
    is unbiased when either the weights or the model are right. Its interval must refit the
    model in every replicate: one that only refitted the examination held the truth in 4 of
    6 seeds of the unit test's world."""
    rng = np.random.default_rng(0)  # reproducible intervals for the same log
    clusters = int(groups.max()) + 1

    def values(theta: list[np.ndarray], w: np.ndarray | None) -> dict[str, dict[str, float]]:
        logged = weights.logged(theta)
        total = float(len(clicks)) if w is None else float(w.sum())
        predicted, direct = rewards.predict(weights, theta, w)
        # An impression the logging policy exposed to no examination weighs 0 (unsupported;
        # estimators.exposure_weights), not 1 / 0.
        ratio = {name: exposure_weights(logged, weights.target(theta, where))
                 for name, (_, _, where, _) in arrays.items()}  # fmt: skip
        terms = {name: r * clicks for name, r in ratio.items()}
        out = {}
        for name in arrays:
            gain = terms[name] - (clicks if baseline is None else terms[baseline])
            robust = direct[name] + ratio[name] * (clicks - predicted)
            out[name] = {key: float(np.sum(t if w is None else w * t)) / total
                         for key, t in (("pbm_ips", terms[name]), ("gain", gain),
                                        ("pbm_dr", robust))}  # fmt: skip
        return out

    point = values(weights.theta, None)
    replicates = []
    for _ in range(REPLICATES):
        w = rng.poisson(1.0, clusters)[groups].astype(np.float64)
        if not w.any():  # every cluster drawn zero times (a handful of them): no replicate
            continue
        replicates.append(values(weights.examination(w), w))
    names = {"pbm_ips": "pbm_ips", "pbm_dr": "pbm_dr",
             "gain": "pbm_ips_gain" if baseline is None else "pbm_ips_difference"}  # fmt: skip
    return {
        target: {
            key: bootstrapped(names[key], point[target][key],
                              [r[target][key] for r in replicates], len(clicks), clusters, alpha)
            for key in names
        }
        for target in arrays
    }  # fmt: skip


def evaluate(
    frame: pd.DataFrame,
    target_slates: dict[str, list[str]],
    alpha: float = 0.05,
    weights: str = "item_position",
) -> dict[str, Any]:
    """IPS, SNIPS and doubly robust estimates (and the IPS confidence sequence, and the
    position-based IPS where the log allows it) of the greedy target whose slate for each
    request is ``target_slates[request_id]``; ``weights`` as ``compare``'s.

    ``frame`` is the logging policy's impressions (``monitoring.logs.impressions``); requests
    without a target slate are left out and counted.
    """
    result = compare(frame, {"target": target_slates}, alpha=alpha, weights=weights)
    if not result["targets"]:
        return {"impressions": 0, "uncovered": result["uncovered"], "estimates": {}}
    target = result["targets"]["target"]
    low, high = confidence_sequence(result["clicks"], result["logged"], target["target"], alpha)
    return {
        "impressions": result["impressions"],
        "uncovered": result["uncovered"],
        "matches": target["matches"],
        "estimates": target["estimates"],
        "gain": target["gain"],  # the target's CTR estimate less the logged CTR, paired
        "cs": (low, high),
        "weights": result["weights"],
    }


def greedy_slates(
    model: Any,
    requests: pd.DataFrame,
    clicks: pd.DataFrame | None = None,
    *,
    fresh_clicks: int = 20,
    fresh_ttl: timedelta = USER_ACTIVITY_TTL,
) -> dict[str, list[str]]:
    """Each request's slate had ``model`` served it greedily, answered as the service answers
    (``serving.engine.user_query`` and ``slate_scores``): the user's training history plus
    their clicks before the request, newest ``fresh_clicks`` of those within ``fresh_ttl``
    (what the service reads from Feast's push-fed view), those seen items left out; anyone
    the model cannot answer for gets popularity. Its top k, k the logged slate's size: each
    request's own (the service takes k from each request, so a log can mix sizes), ranked
    as the service ranks k items (``serving.policies.top``).

    ``clicks`` (``ts``, ``user_id``, ``item_id``: the log's click events, ``logs.clicks``)
    matter: users click several times an hour, and without them the reconstructed champion is
    not the one that served (in the demo its slates matched the log in 25% of slots instead of
    1 - epsilon's 80%, and its CTR read 0.015 high)."""
    from serving.engine import slate_scores, user_query
    from training.metrics import top_k

    if requests.empty:
        return {}
    per_request = requests.groupby("request_id", sort=False).agg(
        user_id=("user_id", "first"), ts=("ts", "first"), device=("device", "first"),
        hour=("hour", "first"), k=("position", "max"),
    )  # fmt: skip
    by_user: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if clicks is not None and len(clicks):
        ordered = clicks.sort_values("ts", kind="stable")
        for user, group in ordered.groupby("user_id", sort=False):
            by_user[user] = (group["ts"].to_numpy(dtype="datetime64[ns]"),
                             group["item_id"].to_numpy())  # fmt: skip
    queries = []
    for row in per_request.itertuples():
        fresh: list[str] = []
        if row.user_id in by_user:
            times, items = by_user[row.user_id]
            at = pd.Timestamp(row.ts).to_datetime64()
            since = np.searchsorted(times, (pd.Timestamp(row.ts) - fresh_ttl).to_datetime64())
            before = np.searchsorted(times, at)  # clicks strictly before the request
            fresh = list(dict.fromkeys(items[since:before][::-1]))[:fresh_clicks]
        context = {
            key: value
            for key, value in (("device", row.device), ("hour", row.hour))
            if not pd.isna(value)
        }  # a request sent without it: None, NaN or NA
        answer = user_query(model, row.user_id, fresh, context)
        queries.append(answer[0] if answer is not None else None)
    # Each request's own size, not the log's largest: a longer slate would show items the
    # candidate never would for that request (``compare`` cuts them too).
    sizes = per_request["k"].to_numpy(dtype=np.int64) + 1
    chosen: list[list[str]] = []
    batch = 512
    for start in range(0, len(queries), batch):
        scores = slate_scores(model, queries[start : start + batch], exclude_seen=True)
        here = sizes[start : start + batch]
        slates: list[list[str]] = [[] for _ in here]
        # top_k per size, as the service ranks k items (ties at the k-th score resolve as
        # its argpartition does for that k, which a longer top cut short need not match).
        for size in np.unique(here):
            members = np.flatnonzero(here == size)
            for row, columns in zip(members, top_k(scores[members], int(size)), strict=True):
                slates[row] = [model.item_ids[c] for c in columns if np.isfinite(scores[row, c])]
        chosen += slates
    return dict(zip(per_request.index, chosen, strict=True))


def gate_estimate(
    frame: pd.DataFrame,
    model: Any,
    alpha: float = 0.05,
    clicks: pd.DataFrame | None = None,
    fresh_clicks: int = 20,
    weights: str = "item_position",
) -> dict[str, float]:
    """What the promotion gate weighs: ``model``'s doubly robust CTR estimate (and interval)
    as the greedy target on the logged impressions ``frame`` (``monitoring.logs.impressions``),
    beside the CTR those impressions actually had. ``impressions`` is 0 when there are none."""
    return gate_estimates(frame, {"challenger": model}, alpha=alpha, clicks=clicks,
                          fresh_clicks=fresh_clicks, weights=weights)["challenger"]  # fmt: skip


def gate_estimates(
    frame: pd.DataFrame,
    models: dict[str, Any],
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    clicks: pd.DataFrame | None = None,
    fresh_clicks: int = 20,
    weights: str = "item_position",
) -> dict[str, dict[str, float]]:
    """``gate_estimate``'s numbers for each named model, all on the same impressions and
    reward model. The gain (``gain_*``) is each model's CTR estimate (``challenger_*``:
    doubly robust, or position-based IPS as ``weights`` and the log allow, which
    ``position_based`` says, 1 or 0) less the logged CTR, paired impression by impression;
    with ``baseline`` (one of the names) it is less that model's estimate instead, also
    paired, and ``baseline_*`` holds that CTR (``baseline_unlogged_share`` its slots' share
    that the log never showed: ``training.promotion.unsupported``).
    ``clicks``: the log's clicks, the newest ``fresh_clicks`` folded into each request as
    the service does (``greedy_slates``). Where new users were served (``is_cold_start``),
    the same gain on their impressions alone is in ``cold_*`` (``cold_start_gains``)."""
    from monitoring.estimators import clustered_ctr

    if frame.empty:
        return {name: {"impressions": 0.0} for name in models}
    targets = {name: greedy_slates(model, frame, clicks, fresh_clicks=fresh_clicks)
               for name, model in models.items()}  # fmt: skip
    result = compare(frame, targets, baseline=baseline, alpha=alpha, weights=weights)
    if not result["targets"]:  # no impression the slates could cover: nothing matches
        return {name: {"impressions": float(len(frame)), "matches": 0.0} for name in models}
    clicks, shown = int(frame["clicked"].sum()), len(frame)
    _, low, high, _ = clustered_ctr(frame["clicked"], frame["user_id"], alpha=alpha)
    numbers = {}
    used = ESTIMATE_OF[result["weights"]]
    for name, estimated in result["targets"].items():
        value, gain = estimated["estimates"][used], estimated["gain"]
        numbers[name] = {
            "impressions": float(result["impressions"]),
            "matches": float(estimated["matches"]),
            "unlogged_share": estimated["unlogged_share"],
            "position_based": float(result["weights"] == "position_based"),
            **value.numbers("challenger"),
            "champion_online": clicks / shown,
            "champion_low": low,
            "champion_high": high,
            **gain.numbers("gain"),
        }
        if (mean_weight := estimated["support"]) is not None:
            numbers[name].update(mean_weight.numbers("support"))
    if baseline is not None:
        base = result["targets"][baseline]
        for values in numbers.values():
            values.update(base["estimates"][used].numbers("baseline"))
            values["baseline_unlogged_share"] = base["unlogged_share"]
    cold = cold_start_gains(frame, targets, baseline=baseline, alpha=alpha, weights=weights)
    for name, values in cold.items():
        numbers[name].update(values)
    return numbers


# How the service answered a request it could not answer from the user's history (the
# response's served_by): only pushed clicks, a profile, or popularity. Those are the new users.
COLD_START_PATHS = ("fresh_clicks", "profile", "popularity")


def is_cold_start(frame: pd.DataFrame) -> np.ndarray:
    """Which logged impressions answered a new user (``COLD_START_PATHS``)."""
    if "served_by" not in frame:
        return np.zeros(len(frame), dtype=bool)
    return frame["served_by"].isin(COLD_START_PATHS).to_numpy()


def cold_start_gains(
    frame: pd.DataFrame,
    targets: dict[str, dict[str, list[str]]],
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    weights: str = "item_position",
) -> dict[str, dict[str, float]]:
    """Each target's gain (``compare``'s) on the cold-start impressions alone
    (``is_cold_start``), as the ``cold_*`` numbers the gate weighs; empty when the log served
    no new user."""
    cold = frame[is_cold_start(frame)]
    if cold.empty:
        return {}
    compared = compare(cold, targets, baseline=baseline, alpha=alpha, weights=weights)["targets"]
    return {
        name: {"cold_impressions": float(len(cold)), "cold_matches": float(estimated["matches"]),
               **estimated["gain"].numbers("cold_gain")}
        for name, estimated in compared.items()
    }  # fmt: skip
