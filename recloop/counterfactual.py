"""What each registered model version would have earned on the demo's own requests.

The demo's simulated users ask for recommendations, and the world knows each user's true
click probability for any slate (``World.click_probabilities``). So the question an
off-policy estimate can only approximate, "what CTR would version v have had on the traffic
we saw?", has an exact answer here: replay each logged request (same user, same simulated
time, same context) through version v, take its greedy top k, and read that slate's expected
clicks off the world. Versions are replayed on the same requests, so two versions' figures
are paired: their difference is not blurred by who happened to ask in which hour.

Each request is answered by the service's own functions (``serving.engine.user_query`` and
``slate_scores``): the user's history as the version saw it in training, plus the user's live
clicks before this request, newest ``fresh_clicks`` of them (what the service reads from
Feast's push source), with those seen items excluded. (Catalogue items a version never
trained on join only a text-reading model's greedy slates, ``serving.catalogue``; the demo's
kinds read no text, so the replay, like the service's greedy slots, leaves them out: only
its exploring slots show them.) A version is replayed only on hours
that started after it was registered, so nothing it trained on comes from the hours it is
judged on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from serving.engine import slate_scores, user_query
from training.data import UserQuery

BATCH = 2048  # requests scored at once: bounds the (requests x catalogue) score matrix


@dataclass(frozen=True)
class LiveRequest:
    """One ``/recommend`` the demo sent, and what the user clicked on its slate."""

    hour: int
    n: int  # the request's order within its hour
    user_id: str
    at: datetime  # the world's (simulated) time of the request
    context: dict[str, Any]
    clicked: tuple[str, ...]  # item ids clicked on the served slate


@dataclass(frozen=True)
class Replay:
    """A version replayed on requests (``replay``), per request in the order given."""

    expected: np.ndarray  # expected clicks of the version's greedy top k
    shown: np.ndarray  # that slate's length
    # With references: over the items the version could have shown the request (those it
    # scores, the user's seen items left out), the expected clicks of the best k-slate, the
    # ceiling no ranking of that catalogue can pass, and of a uniformly random k-slate, the
    # floor any model should beat.
    best: np.ndarray | None = None
    random: np.ndarray | None = None


def replay(
    model,
    world,
    requests: Sequence[LiveRequest],
    *,
    k: int,
    fresh_clicks: int,
    earlier: Sequence[LiveRequest] = (),
    references: bool = False,
) -> Replay:
    """``model``'s greedy top k for each request, and its expected clicks (the sum over the
    slate of the world's true click probabilities); with ``references``, the best and a
    random slate's too, from the same scores. ``earlier``: requests before these whose clicks
    the service had already been told of.

    Under the world's position-based click model the best slate puts the most attractive
    items in the most examined slots (the rearrangement inequality), so it is the items
    sorted by true attractiveness; a random slate's slots each hold the mean
    attractiveness."""
    from training.metrics import top_k

    queries = _queries(model, requests, fresh_clicks, earlier)
    n = len(requests)
    expected, shown = np.zeros(n), np.zeros(n, dtype=np.int64)
    best, uniform = (np.zeros(n), np.zeros(n)) if references else (None, None)
    examination = world.examination(k)
    for start in range(0, n, BATCH):
        rows = range(start, min(start + BATCH, n))
        scores = slate_scores(model, [queries[i] for i in rows], exclude_seen=True)
        top = top_k(scores, k)
        for row, i in enumerate(rows):
            request = requests[i]
            items = [model.item_ids[c] for c in top[row] if np.isfinite(scores[row, c])]
            if items:
                truth = world.click_probabilities(
                    request.user_id, items, request.at, request.context
                )
                expected[i], shown[i] = truth.sum(), len(items)
            if best is None or uniform is None:
                continue
            scorable = [model.item_ids[c] for c in np.flatnonzero(np.isfinite(scores[row]))]
            if scorable:
                attractive = world.attractiveness(
                    request.user_id, scorable, request.at, request.context
                )
                slots = examination[: min(k, len(scorable))]
                best[i] = float(slots @ -np.sort(-attractive)[: len(slots)])
                uniform[i] = float(slots.sum() * attractive.mean())
    return Replay(expected, shown, best, uniform)


def _queries(
    model, requests: Sequence[LiveRequest], fresh_clicks: int, earlier: Sequence[LiveRequest]
) -> list[UserQuery | None]:
    """Each request's query as the service would have built it: the user's history as the
    model saw it plus their live clicks before the request (None: popularity answers)."""
    live: dict[str, list[str]] = {}  # each user's live clicks, oldest first
    for request in sorted(earlier, key=lambda r: (r.hour, r.n)):
        live.setdefault(request.user_id, []).extend(request.clicked)
    order = sorted(range(len(requests)), key=lambda i: (requests[i].hour, requests[i].n))
    queries: list[UserQuery | None] = [None] * len(requests)
    for i in order:
        request = requests[i]
        fresh = list(dict.fromkeys(reversed(live.get(request.user_id, []))))[:fresh_clicks]
        answer = user_query(model, request.user_id, fresh, request.context)
        queries[i] = answer[0] if answer is not None else None
        live.setdefault(request.user_id, []).extend(request.clicked)
    return queries


def paired_difference(a: np.ndarray, b: np.ndarray, slots: int, alpha: float) -> dict[str, float]:
    """The mean per-slot true CTR of slates ``a`` less slates ``b`` (expected clicks per
    request, the same requests), with a t interval over requests: the true CTRs carry no
    click noise, so the interval is only for which requests happened to come."""
    from statsmodels.stats.weightstats import DescrStatsW

    difference = (np.asarray(a) - np.asarray(b)) / slots
    low, high = DescrStatsW(difference).tconfint_mean(alpha=alpha)
    return {"value": float(difference.mean()), "low": float(low), "high": float(high),
            "requests": len(difference)}  # fmt: skip
