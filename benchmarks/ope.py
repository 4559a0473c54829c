"""Off-policy estimation accuracy on simulator logs whose truth is known exactly.

``.venv/bin/python -m benchmarks.ope --json``

Setup (DESIGN.md's OPE protocol): the simulated world's position-based click model gives the
exact click probability of any item in any slot. 10,000 requests (user, context, 30 candidate
items) are drawn once. The logging policy is Plackett-Luce (temperature 0.5) over a noisy
score (the true utility plus unit Gaussian noise); the target is a *different* Plackett-Luce
policy over an independently noisy score. Both policies' per-slot marginals are exact
(``serving.policies.plackett_luce_marginals``), so the truths are exact expectations:
V(pi) = mean over requests of sum_k sum_a pi_k(a|x) * P(click | a at k, x) / k.

Each of 100 seeded repetitions logs 100,000 impressions (10 slots x 10,000 slates) by
sampling the logging policy's slates and the users' clicks, then estimates the target's CTR
with IPS, SNIPS and doubly robust (monitoring.estimators; DR's reward model is monitoring.ope's
cross-fitted position-based model), and with vw-estimators' IPS and SNIPS (and its Gaussian
interval and confidence sequence) on the same impressions. It also checks the on-policy CTR
of the logging policy against its Wilson interval, and how often the promotion gate's support
check (the target's mean importance weight, ``estimators.support``) lets the log judge the
target: it should, since the logging policy shows every candidate in every slot. The truth
is conditional on the drawn requests (the repetitions resample slates and clicks).

A second protocol (rows prefixed ``greedy_target_``) draws the same requests' slates as the
demo's service does: epsilon-greedy (epsilon 0.2) over the logging score's top 10, and
estimates a *greedy* target (the top 10 of the target's score). Item-position weights are
then N / epsilon = 150 wherever the target differs from the logging policy's greedy slate,
so it also reports the position-based IPS and doubly robust estimates (``pbm_ips``,
``pbm_dr``) as the hourly monitoring makes them (``monitoring.ope.compare`` with the logged
per-slot propensities).

Metrics: mean relative error per estimator, the share of repetitions whose 95% interval
holds the truth (goals: relative error <= 5%, coverage >= 90%), and the intervals' mean
width as a share of the truth, against IPS's (``_ci_width``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from rich.progress import track

from benchmarks.results import Row, add_output_options, publish
from monitoring import estimators
from monitoring.ope import compare, cross_fit, padded_examination
from recloop.settings import PromotionSettings
from recloop.sources.simulator import DEVICES, WorldConfig, build_world
from serving.policies import PlackettLuce, plackett_luce_marginals
from training.promotion import unsupported

SLOTS = 10
CANDIDATES = 30
TEMPERATURE = 0.5
EPSILON = 0.2  # the second protocol's logging policy, as the demo's service explores


def _requests(count: int, seed: int):
    """Contexts, candidates, true click probabilities, both policies' marginals, and each
    request's user."""
    world = build_world(WorldConfig(users=500, items=300, seed=seed))
    rng = np.random.default_rng([seed, 11])
    at = world.end
    users = world.users_at(at)
    items = world.items_at(at)
    exam = world.examination(SLOTS)
    policy = PlackettLuce(TEMPERATURE)
    candidates = np.empty((count, CANDIDATES), dtype=np.int64)
    click = np.empty((count, CANDIDATES, SLOTS))  # P(click | candidate a at slot k)
    logging = np.empty((count, CANDIDATES, SLOTS))
    target = np.empty((count, CANDIDATES, SLOTS))
    log_weights = np.empty((count, CANDIDATES))
    target_weights = np.empty((count, CANDIDATES))
    everyone = np.arange(CANDIDATES)
    requested_by = np.empty(count, dtype=object)
    for n in track(range(count), description="drawing requests", transient=True):
        user = world.users[int(users[rng.integers(len(users))])].user_id
        requested_by[n] = user
        context = {"hour": int(rng.integers(24)), "device": DEVICES[int(rng.integers(3))]}
        chosen = rng.choice(items, size=CANDIDATES, replace=False)
        ids = [world.items[i].item_id for i in chosen]
        utility = world.utility(user, ids, at, context)
        attract = 1.0 / (1.0 + np.exp(-utility))
        candidates[n] = chosen
        click[n] = attract[:, None] * exam[None, :]
        w_log = policy.weights(utility + rng.normal(0, 1, CANDIDATES))
        w_target = policy.weights(utility + rng.normal(0, 1, CANDIDATES))
        log_weights[n], target_weights[n] = w_log, w_target
        logging[n] = plackett_luce_marginals(w_log, everyone, SLOTS)
        target[n] = plackett_luce_marginals(w_target, everyone, SLOTS)
    return candidates, click, logging, target, log_weights, target_weights, requested_by


def _greedy(candidates, log_weights, target_weights):
    """The second protocol's policies, over the same requests: epsilon-greedy logging over
    the logging score's top SLOTS, and the greedy target (the top SLOTS of the target's
    score). Exact marginals of both, and the greedy slates the logging policy departs from."""
    count = len(candidates)
    greedy_log = np.argsort(-log_weights, axis=1, kind="stable")[:, :SLOTS]
    greedy_target = np.argsort(-target_weights, axis=1, kind="stable")[:, :SLOTS]
    requests, slots = np.arange(count)[:, None], np.arange(SLOTS)[None, :]
    logging = np.full((count, CANDIDATES, SLOTS), EPSILON / CANDIDATES)
    logging[requests, greedy_log, slots] += 1 - EPSILON
    target = np.zeros((count, CANDIDATES, SLOTS))
    target[requests, greedy_target, slots] = 1.0
    return logging, target, greedy_log


def _plackett_luce_slates(rng, log_weights) -> np.ndarray:
    """(requests, SLOTS) candidate positions: Plackett-Luce slates by Gumbel top-k."""
    keys = np.log(log_weights) + rng.gumbel(size=log_weights.shape)
    return np.argsort(-keys, axis=1)[:, :SLOTS]


def _epsilon_greedy_slates(rng, greedy_log) -> np.ndarray:
    """The greedy slate, or with probability EPSILON a uniformly random ordered sample."""
    slates = greedy_log.copy()
    for n in np.flatnonzero(rng.random(len(slates)) < EPSILON):
        slates[n] = rng.permutation(CANDIDATES)[:SLOTS]
    return slates


def _log(rng, candidates, click, logging, target, slates, users) -> pd.DataFrame:
    """One repetition's impressions of the drawn ``slates`` and their clicks; ``users``: each
    request's user (``monitoring.ope`` clusters its intervals by user)."""
    count = len(candidates)
    rows = np.repeat(np.arange(count), SLOTS)
    slots = np.tile(np.arange(SLOTS), count)
    shown = slates.ravel()
    p_click = click[rows, shown, slots]
    return pd.DataFrame({
        "request": rows, "request_id": rows.astype(str), "user_id": users[rows],
        "position": slots,
        "candidate": shown, "item_id": candidates[rows, shown].astype(str),
        "clicked": (rng.random(len(rows)) < p_click).astype(int),
        "propensity": logging[rows, shown, slots], "target": target[rows, shown, slots],
    })  # fmt: skip


def _doubly_robust(frame: pd.DataFrame, candidates, target) -> estimators.Estimate:
    """DR with the cross-fitted position-based reward model; the direct term sums the
    target's exact marginals over every candidate of the request."""
    requests = frame["request"].to_numpy()
    slots = frame["position"].to_numpy()
    predicted, fitted = cross_fit(frame, requests % 2)
    direct = np.zeros(len(frame))
    ids = candidates.astype(str)
    for mine, model in fitted:
        exam = padded_examination(model.examination, SLOTS)
        known, default = model.attractiveness, model.default
        attract = np.vectorize(lambda i, known=known, default=default: known.get(i, default))(ids)
        value = np.einsum("nas,na,s->ns", target, attract, exam)  # (requests, slots)
        direct[mine] = value[requests[mine], slots[mine]]
    return estimators.doubly_robust(
        frame["clicked"], frame["propensity"], frame["target"], frame["request_id"],
        predicted=predicted, direct=direct,
    )  # fmt: skip


def _position_based(
    frame: pd.DataFrame, logging, target_slates
) -> list[tuple[str, estimators.Estimate]]:
    """The position-based IPS and doubly robust estimates of the greedy target, as the hourly
    monitoring makes them (``monitoring.ope.compare``: the examination harvested from the
    logged per-slot propensities, a bootstrap interval that refits it, and the reward model
    with it)."""
    requests = frame["request"].to_numpy()
    logged = frame.assign(slot_propensities=list(logging[requests, frame["candidate"]]))
    result = compare(logged, {"target": target_slates}, weights="position_based")
    estimates = result["targets"]["target"]["estimates"]
    return [(name, estimates[name]) for name in ("pbm_ips", "pbm_dr")]


def _vw(frame: pd.DataFrame, with_cs: bool) -> dict[str, tuple[float, float, float]]:
    from estimators.bandits import cs, gaussian
    from estimators.bandits import ips as vw_ips
    from estimators.bandits import snips as vw_snips

    point_ips, point_snips, interval = vw_ips.Estimator(), vw_snips.Estimator(), gaussian.Interval()
    sequence = cs.Interval() if with_cs else None
    for p_log, r, p_pred in zip(
        frame["propensity"], frame["clicked"], frame["target"], strict=True
    ):
        point_ips.add_example(p_log, r, p_pred)
        point_snips.add_example(p_log, r, p_pred)
        interval.add_example(p_log, r, p_pred)
        if sequence is not None:
            sequence.add_example(p_log, r, p_pred)
    low, high = interval.get(0.05)
    out = {"ips": (point_ips.get(), low, high), "snips": (point_snips.get(), np.nan, np.nan)}
    if sequence is not None:
        cs_low, cs_high = sequence.get(0.05)
        out["cs"] = (point_ips.get(), cs_low, cs_high)
    return out


def _protocol(prefix: str, description: str, requests, draw, args, target_slates=None) -> list[Row]:
    """One protocol's rows: each estimator's mean relative error and interval coverage over
    the repetitions, the on-policy Wilson coverage and the gate's support check. With
    ``target_slates`` (a greedy target's slate per request id), the position-based IPS too."""
    candidates, click, logging, target, users = requests
    count = len(candidates)
    truth = float(np.einsum("nas,nas->", target, click) / (count * SLOTS))
    on_policy = float(np.einsum("nas,nas->", logging, click) / (count * SLOTS))
    results: dict[str, list[tuple[float, float, float]]] = {}
    wilson_hits, supported = [], []
    gate = PromotionSettings()
    for rep in track(range(args.repetitions), description=f"{prefix or 'pl'} repetitions",
                     transient=True):  # fmt: skip
        rng = np.random.default_rng([args.seed, 23, rep])
        frame = _log(rng, candidates, click, logging, target, draw(rng), users)
        clicks, logged, weights, slates = (frame["clicked"], frame["propensity"],
                                           frame["target"], frame["request_id"])  # fmt: skip
        for name, estimate in (
            ("ips", estimators.ips(clicks, logged, weights, slates)),
            ("snips", estimators.snips(clicks, logged, weights, slates)),
            ("dr", _doubly_robust(frame, candidates, target)),
            *(_position_based(frame, logging, target_slates) if target_slates is not None else []),
        ):
            results.setdefault(name, []).append((estimate.value, estimate.low, estimate.high))
        for name, triple in _vw(frame, rep < args.cs_repetitions).items():
            results.setdefault(f"vw_{name}", []).append(triple)
        low, high = estimators.wilson(int(clicks.sum()), len(clicks))
        wilson_hits.append(low <= on_policy <= high)
        # Whether the gate would let these logs judge the target at all (its support check).
        mean_weight = estimators.support(logged, weights, slates)
        supported.append(unsupported(mean_weight.numbers("support"), gate) is None)

    protocol = (f"{count * SLOTS:,} impressions x {args.repetitions} seeds; {description}; "
                f"truth {truth:.4f}")  # fmt: skip
    rows = []
    ips = np.array(results["ips"], dtype=np.float64)
    ips_width = float(np.mean(ips[:, 2] - ips[:, 1]) / truth)  # the widths' reference
    for name, triples in results.items():
        values = np.array(triples, dtype=np.float64)
        error = float(np.mean(np.abs(values[:, 0] - truth) / truth))
        rows.append(Row("ope", f"{prefix}{name}_rel_error", error, "x", "goal", 0.05,
                        protocol=protocol, digits=4))  # fmt: skip
        if np.isfinite(values[:, 1]).all():
            coverage = float(np.mean((values[:, 1] <= truth) & (truth <= values[:, 2])))
            runs = (
                f"{len(values)} seeds; {description}"
                if len(values) != args.repetitions
                else protocol
            )
            rows.append(Row("ope", f"{prefix}{name}_ci_coverage", coverage, "share", "goal",
                            0.90, protocol=runs, digits=2))  # fmt: skip
            # The mean interval width, as a share of the truth, against IPS's on the same logs.
            width = float(np.mean(values[:, 2] - values[:, 1]) / truth)
            rows.append(Row("ope", f"{prefix}{name}_ci_width", width, "x truth", "ips width",
                            ips_width, protocol=runs, digits=3))  # fmt: skip
    rows.append(Row("ope", f"{prefix}wilson_on_policy_coverage", float(np.mean(wilson_hits)),
                    "share", "goal", 0.90, protocol=f"{description}; on-policy CTR "
                    f"{on_policy:.4f}", digits=2))  # fmt: skip
    rows.append(Row("ope", f"{prefix}support_pass", float(np.mean(supported)), "share", "goal",
                    0.95, protocol=f"{protocol}; the gate's support check (training.promotion."
                    "unsupported) passed", digits=2))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--cs-repetitions", type=int, default=20,
                        help="repetitions that also run vw-estimators' confidence sequence "
                        "(pure Python, seconds per 100k impressions)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    add_output_options(parser)
    args = parser.parse_args()

    started = time.perf_counter()
    candidates, click, logging, target, log_weights, target_weights, users = _requests(
        args.requests, args.seed
    )
    rows = _protocol("", f"PL log vs PL target (T={TEMPERATURE})",
                     (candidates, click, logging, target, users),
                     lambda rng: _plackett_luce_slates(rng, log_weights), args)  # fmt: skip
    greedy_logging, greedy_target, greedy_log = _greedy(candidates, log_weights, target_weights)
    top = np.argmax(greedy_target, axis=1)  # (requests, SLOTS): the target's candidate per slot
    target_slates = {str(n): [str(i) for i in candidates[n, top[n]]] for n in range(len(top))}
    rows += _protocol("greedy_target_", f"epsilon-greedy log (epsilon={EPSILON}) vs greedy "
                      "target", (candidates, click, greedy_logging, greedy_target, users),
                      lambda rng: _epsilon_greedy_slates(rng, greedy_log), args,
                      target_slates)  # fmt: skip
    seconds = time.perf_counter() - started
    rows.append(Row("ope", "seconds", seconds, "s", "none", seconds,
                    protocol=f"both protocols, {args.repetitions} seeds each"))  # fmt: skip
    publish(rows, args, lambda r: f"{r.metric}: {r.value:.4f} (reference {r.reference_value})")


if __name__ == "__main__":
    main()
