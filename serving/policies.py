"""Explore/exploit policies: how a slate of k items is drawn from a model's scored candidates,
and the exact probability of each item in its slot (the propensity the event log keeps).

Every policy returns, per slot, the *marginal* probability that the item shown there would be
shown in that slot by this policy for this request (given the candidates and their scores).
That is what per-slot inverse propensity estimators divide by, and what the contract's
``propensity`` field means. Each policy also gives every shown item's marginal in *every* slot
of the slate (``Slate.slot_propensities``, the contract's ``slot_propensities``): a click
model in which a click depends on the slot only through an examination probability (the
position-based model) lets an estimator credit a target that puts the item in another slot,
and that needs the probability of the item in each slot (``monitoring.estimators``'
position-based weights; Li et al. 2018).

- ``greedy``: the top k by score; every propensity is 1.
- ``epsilon_greedy``: with probability 1 - epsilon the greedy slate; otherwise a uniformly
  random ordered sample of k of all the candidates, scored and unscored (below). Exact
  marginals: epsilon / N + (1 - epsilon) * [the item is the slot's greedy one], N the
  candidates. Every candidate can be shown in every slot, the champion's own top k included,
  so an off-policy estimate of any model that ranks the same candidates has full support
  (the per-slate uniform logging of Li et al. 2018). (An earlier version explored per slot,
  replacing a slot's greedy item by one from below the top k: it never showed one of the
  top k in another slot, and a third of EASE's slots in the demo were beyond its support.)
- ``plackett_luce``: a ranking sampled without replacement with probabilities proportional to
  exp(score / temperature) (scores standardised over the candidates first). The marginal of
  item i at slot j is the exponential-race integral
  ``P(i at j) = int_0^inf w_i exp(-w_i t) P(exactly j others arrived by t) dt``
  (Plackett-Luce as a race of exponential clocks, Yellott 1977), computed by quadrature over
  log t with a Poisson-binomial recursion inside: exact to about 1e-6, which the unit tests
  check against the closed form of slot 0 and against empirical frequencies.
- ``thompson``: Thompson sampling on each candidate's click-through posterior
  Beta(s * m + clicks, s * (1 - m) + impressions - clicks), the scored candidates and the
  unscored ones alike; the slate is the top k of one posterior draw. The prior is empirical
  Bayes (Chapelle and Li, 2011): m is the candidates' pooled CTR and s = ``prior_strength``
  pseudo-impressions, so an item nobody has seen yet starts at the typical item's rate, not at
  Beta(1, 1)'s 0.5 (which would put every new item above every known one in most draws). Its
  marginals have no closed form: they are estimated from ``draws`` further posterior draws
  (Monte Carlo, standard error at most 0.5 / sqrt(draws)), as the Open Bandit Dataset does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

# Quadrature grid for the Plackett-Luce integral: points per decade of t, and how far past
# the last chosen item's clock the integral runs (exp(-40) is far below float precision).
_POINTS_PER_DECADE = 16
_TAIL = 40.0
_HEAD = 1e-9


@dataclass(frozen=True)
class Candidates:
    """What a policy draws from: the model's top candidates, best first.

    ``clicks``/``impressions`` are the items' logged counts (Thompson sampling's evidence), for
    the scored items and then the unscored ones; the other policies ignore them.
    ``unscored``: how many further items, after the scored
    ones (positions ``len(scores)`` onwards), the model has no score for: new catalogue items
    a model that reads no text cannot place. Only exploration (``explores_unscored``) shows
    them; without it such a model would never show a new item, and no click would ever teach
    the next training run about one.
    """

    scores: np.ndarray
    clicks: np.ndarray | None = None
    impressions: np.ndarray | None = None
    unscored: int = 0


@dataclass(frozen=True)
class Slate:
    """Chosen candidate positions in slot order, and each one's probability in its slot.

    ``slot_propensities[i, j]``: the probability that the item shown in slot i would be shown
    in slot j, for every slot j of the slate; its diagonal is ``propensities``."""

    indices: np.ndarray
    slot_propensities: np.ndarray

    @property
    def propensities(self) -> np.ndarray:
        """Each shown item's probability in the slot it was shown in."""
        return np.diagonal(self.slot_propensities).copy()


class Policy(Protocol):
    name: str
    explores_unscored: ClassVar[bool]  # whether a draw may show ``Candidates.unscored`` items
    reads_counts: ClassVar[bool]  # whether a draw needs ``Candidates.clicks``/``impressions``
    draws_at_random: ClassVar[bool]  # whether a draw reads ``rng`` (None is passed otherwise)

    def draw(self, candidates: Candidates, k: int, rng: np.random.Generator | None) -> Slate: ...


@dataclass(frozen=True)
class Greedy:
    name: str = "greedy"
    explores_unscored: ClassVar[bool] = False
    reads_counts: ClassVar[bool] = False
    draws_at_random: ClassVar[bool] = False

    def draw(self, candidates: Candidates, k: int, rng: np.random.Generator | None) -> Slate:
        del rng
        best = top(candidates.scores, k)
        return Slate(best, np.eye(len(best)))


@dataclass(frozen=True)
class EpsilonGreedy:
    epsilon: float = 0.1
    name: str = field(init=False)
    explores_unscored: ClassVar[bool] = True
    reads_counts: ClassVar[bool] = False
    draws_at_random: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon: {self.epsilon} is outside [0, 1]")
        object.__setattr__(self, "name", f"epsilon_greedy(epsilon={self.epsilon:g})")

    def draw(self, candidates: Candidates, k: int, rng: np.random.Generator) -> Slate:
        scored = len(candidates.scores)
        greedy = top(candidates.scores, min(k, scored))
        everyone = scored + candidates.unscored
        if everyone == 0 or self.epsilon == 0:
            return Slate(greedy, np.eye(len(greedy)))
        # A random slate is as long as the greedy one (unscored items only ever replace, never
        # lengthen: a model with nothing to rank shows nothing).
        explore = rng.random() < self.epsilon
        indices = rng.permutation(everyone)[: len(greedy)] if explore else greedy
        # Item i in slot j: epsilon / N from the random slate, plus 1 - epsilon where it is
        # slot j's greedy item.
        everywhere = self.epsilon / everyone + (1 - self.epsilon) * (
            indices[:, None] == greedy[None, :]
        )
        return Slate(indices, everywhere)


@dataclass(frozen=True)
class PlackettLuce:
    temperature: float = 0.2
    name: str = field(init=False)
    explores_unscored: ClassVar[bool] = False  # a weight needs a score
    reads_counts: ClassVar[bool] = False
    draws_at_random: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature: {self.temperature} must be above 0")
        object.__setattr__(self, "name", f"plackett_luce(temperature={self.temperature:g})")

    def weights(self, scores: np.ndarray) -> np.ndarray:
        """exp(standardised score / temperature), scaled so that the largest is 1."""
        spread = scores.std()
        utility = (scores - scores.mean()) / (spread if spread > 0 else 1.0) / self.temperature
        return np.exp(utility - utility.max())

    def draw(self, candidates: Candidates, k: int, rng: np.random.Generator) -> Slate:
        if len(candidates.scores) == 0:
            # exclude_seen can leave nothing to rank: an empty slate, as the other policies
            # draw (the weights' max and the marginals' min have no value on an empty pool).
            return Slate(np.zeros(0, dtype=np.int64), np.zeros((0, 0)))
        weights = self.weights(candidates.scores)
        k = min(k, len(weights))
        # Gumbel-top-k: the k largest of log w + Gumbel noise are a Plackett-Luce ranking.
        with np.errstate(divide="ignore"):
            keys = np.log(weights) + rng.gumbel(size=len(weights))
        indices = np.argsort(-keys, kind="stable")[:k]
        marginals = plackett_luce_marginals(weights, indices, k)
        return Slate(indices, marginals)


@dataclass(frozen=True)
class Thompson:
    draws: int = 2000
    prior_strength: float = 20.0  # pseudo-impressions of the pooled-CTR prior
    name: str = "thompson"
    # Scores play no part in a draw, so an item without one competes like any other, on its
    # counts (none yet: the prior alone).
    explores_unscored: ClassVar[bool] = True
    reads_counts: ClassVar[bool] = True  # its posteriors are the items' clicks and impressions
    draws_at_random: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.prior_strength <= 0:
            raise ValueError(f"prior_strength: {self.prior_strength} must be above 0")

    def draw(self, candidates: Candidates, k: int, rng: np.random.Generator) -> Slate:
        if candidates.clicks is None or candidates.impressions is None:
            raise ValueError("thompson: candidates need clicks and impressions")
        clicks = np.asarray(candidates.clicks, dtype=np.float64)
        shown = np.asarray(candidates.impressions, dtype=np.float64)
        size = len(candidates.scores) + candidates.unscored
        if len(clicks) != size or len(shown) != size:
            raise ValueError(
                f"thompson: clicks and impressions need one count per candidate, scored and "
                f"unscored ({size}), got {len(clicks)} and {len(shown)}"
            )
        misses = np.maximum(shown - clicks, 0.0)
        pooled = (clicks.sum() + 1.0) / (shown.sum() + 2.0)  # the pooled CTR, never 0 or 1
        alpha = self.prior_strength * pooled + clicks
        beta = self.prior_strength * (1.0 - pooled) + misses
        k = min(k, len(alpha))
        indices = top(rng.beta(alpha, beta), k)
        samples = rng.beta(alpha, beta, size=(self.draws, len(alpha)))
        ranked = np.argsort(-samples, axis=1, kind="stable")[:, :k]  # (draws, k)
        # Item i in slot j: how often the draws put it there.
        frequencies = (ranked[:, None, :] == indices[None, :, None]).mean(axis=0)  # (k, k)
        # The shown slate itself is one draw: a frequency of 0 would be a Monte Carlo miss,
        # and a propensity must be positive, so count the shown draw as well.
        everywhere = (frequencies * self.draws + np.eye(k)) / (self.draws + 1)
        return Slate(indices, everywhere)


def plackett_luce_marginals(weights: np.ndarray, items: np.ndarray, slots: int) -> np.ndarray:
    """(len(items), slots): P(item at slot j) under Plackett-Luce sampling with ``weights``.

    The exponential race: item m's clock rings at Exp(w_m); the ranking is the order of rings.
    P(i at j) = int w_i exp(-w_i t) P(exactly j of the others rang by t) dt, with the inner
    probability from a Poisson-binomial recursion (truncated at ``slots`` counts), per item.
    """
    weights = np.asarray(weights, dtype=np.float64)
    items = np.asarray(items)
    total = weights.sum()
    lowest = weights[items].min()
    # Log-spaced grid: from where nothing has rung yet to where the slowest chosen clock surely
    # has. Below the grid the integrand is w_i * [j == 0], added in closed form.
    start, stop = _HEAD / total, _TAIL / lowest
    decades = np.log10(stop / start)
    t = np.logspace(np.log10(start), np.log10(stop), int(decades * _POINTS_PER_DECADE) + 2)
    log_step = np.log(t[1] / t[0])

    rang = -np.expm1(-np.outer(weights, t))  # (M, Q): P(clock m rang by t)
    # P(exactly j of the others rang) for item i is the Poisson-binomial of every clock but
    # i's: the convolution of the distributions over the clocks before i and after i, each
    # built once for all prefixes and suffixes (2M small steps instead of M per item).
    prefix = _poisson_binomial_scan(rang, slots)  # prefix[m]: clocks 0..m-1
    suffix = _poisson_binomial_scan(rang[::-1], slots)[::-1]  # suffix[m]: clocks m+1..M-1
    before, after = prefix[items], suffix[items]  # (items, slots, Q)
    state = np.zeros_like(before)
    for j in range(slots):
        state[:, j] = np.einsum("vaq,vaq->vq", before[:, : j + 1], after[:, j::-1])
    state = state.transpose(0, 2, 1)  # (items, Q, slots)
    own = weights[items][:, None] * np.exp(-np.outer(weights[items], t))  # (items, Q) density
    integrand = own[..., None] * state * t[None, :, None]  # d t = t d(log t)
    trapezoid = (integrand[:, 1:] + integrand[:, :-1]).sum(axis=1) * log_step / 2
    trapezoid[:, 0] += weights[items] * start
    return np.clip(trapezoid, 1e-12, 1.0)


def _poisson_binomial_scan(rang: np.ndarray, slots: int) -> np.ndarray:
    """(M, slots, Q): entry m is P(exactly j of clocks 0..m-1 rang by t), j < slots."""
    out = np.zeros((len(rang), slots, rang.shape[1]))
    state = np.zeros((slots, rang.shape[1]))
    state[0] = 1.0
    for m, p in enumerate(rang):
        out[m] = state
        shifted = np.concatenate([np.zeros_like(state[:1]), state[:-1]])
        state = state * (1 - p) + shifted * p
    return out


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first; ties by position (training's top_k on
    one row, which also handles an empty pool)."""
    scores = np.asarray(scores)
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    # top_k's steps on one row, without its take_along_axis bookkeeping (twice per request).
    part = np.argpartition(-scores, k - 1)[:k]
    part.sort()  # so that the stable sort below breaks ties by position
    return part[np.argsort(-scores[part], kind="stable")]


def make_policy(
    name: str, *, epsilon: float, temperature: float, draws: int, prior_strength: float = 20.0
) -> Policy:
    """The policy a setting names."""
    if name == "greedy":
        return Greedy()
    if name == "epsilon_greedy":
        return EpsilonGreedy(epsilon)
    if name == "plackett_luce":
        return PlackettLuce(temperature)
    if name == "thompson":
        return Thompson(draws, prior_strength)
    raise ValueError(
        f"serving.policy: unknown {name!r} (allowed: greedy, epsilon_greedy, plackett_luce, "
        "thompson)"
    )
