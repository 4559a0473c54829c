"""How often the hourly CTR's 95% interval holds the CTR it estimates, when each user makes
several requests: the plain Wilson interval against ``monitoring.estimators.clustered_ctr``
clustered by request and by user.

``.venv/bin/python -m benchmarks.ctr_intervals --json``

Setup: the simulated world (500 users, 300 items) and a personalised greedy policy, as the
service serves: each request shows the 10 items of highest true utility plus unit Gaussian
noise, in the request's own context (hour of day, device). Every user gets a pool of 20 such
requests with their exact click probabilities (position-based click model). The truth is the
policy's expected CTR over the users and their pools. Each repetition is one hour of the
demo's traffic: 300 users drawn with replacement, 5 requests each drawn from their pool, and
clicks drawn from the exact probabilities; its CTR is unbiased for the truth, and an honest
95% interval holds it in about 95% of repetitions.

Metrics: each interval's coverage over the repetitions (goal: at least 0.93, two points of
simulation noise under the nominal level at 2,000 repetitions), and its mean width as a
ratio to Wilson's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.progress import track

from benchmarks.results import Row, add_output_options, publish
from monitoring import estimators
from recloop.sources.simulator import DEVICES, WorldConfig, build_world

SLOTS = 10
POOL = 20  # requests per user, whose mean is that user's true CTR
USERS_PER_HOUR = 300
REQUESTS_PER_USER = 5


def _pools(seed: int) -> np.ndarray:
    """(users, POOL, SLOTS): the true click probability of every slot of every pooled request."""
    world = build_world(WorldConfig(users=500, items=300, seed=seed))
    rng = np.random.default_rng([seed, 31])
    at = world.end
    users = world.users_at(at)
    ids = [world.items[i].item_id for i in world.items_at(at)]
    pools = np.empty((len(users), POOL, SLOTS))
    for u, index in enumerate(track(users, description="drawing requests", transient=True)):
        user = world.users[int(index)].user_id
        for r in range(POOL):
            context = {"hour": int(rng.integers(24)), "device": DEVICES[int(rng.integers(3))]}
            utility = world.utility(user, ids, at, context)
            shown = np.argsort(-(utility + rng.normal(0, 1, len(ids))))[:SLOTS]
            pools[u, r] = world.click_probabilities(user, [ids[i] for i in shown], at, context)
    return pools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    add_output_options(parser)
    args = parser.parse_args()

    started = time.perf_counter()
    pools = _pools(args.seed)
    truth = float(pools.mean())
    user_ctr = pools.mean(axis=(1, 2))
    hits: dict[str, list[bool]] = {"wilson": [], "by_request": [], "by_user": []}
    widths: dict[str, list[float]] = {name: [] for name in hits}
    rng = np.random.default_rng([args.seed, 37])
    # Every hour has the same shape: each impression's user and request, in order.
    user_of = np.repeat(np.arange(USERS_PER_HOUR), REQUESTS_PER_USER * SLOTS)
    request_of = np.repeat(np.arange(USERS_PER_HOUR * REQUESTS_PER_USER), SLOTS)
    for _ in track(range(args.repetitions), description="hours", transient=True):
        users = rng.integers(len(pools), size=USERS_PER_HOUR)
        requests = rng.integers(POOL, size=(USERS_PER_HOUR, REQUESTS_PER_USER))
        probabilities = pools[users[:, None], requests].reshape(-1)
        clicks = (rng.random(probabilities.shape) < probabilities).astype(np.float64)
        intervals = {
            "wilson": estimators.wilson(clicks.sum(), len(clicks)),
            "by_request": estimators.clustered_ctr(clicks, request_of)[1:3],
            "by_user": estimators.clustered_ctr(clicks, user_of)[1:3],
        }
        for name, (low, high) in intervals.items():
            hits[name].append(low <= truth <= high)
            widths[name].append(high - low)
    seconds = time.perf_counter() - started

    protocol = (f"{USERS_PER_HOUR} users x {REQUESTS_PER_USER} requests x {SLOTS} slots an "
                f"hour, {args.repetitions} hours; simulator users, noisy-greedy policy; truth "
                f"{truth:.4f}, users' CTR sd {user_ctr.std():.4f}")  # fmt: skip
    wilson_width = float(np.mean(widths["wilson"]))
    rows = []
    for name in hits:
        rows.append(Row("ctr_intervals", f"{name}_coverage", float(np.mean(hits[name])), "share",
                        "goal", 0.93, protocol=protocol, digits=3))  # fmt: skip
        rows.append(Row("ctr_intervals", f"{name}_width", float(np.mean(widths[name])), "",
                        "wilson_width", wilson_width, protocol=protocol, digits=4))  # fmt: skip
    rows.append(Row("ctr_intervals", "seconds", seconds, "s", "none", seconds,
                    protocol=f"{args.repetitions} hours"))  # fmt: skip
    publish(rows, args, lambda r: f"{r.metric}: {r.value:.4f} (ratio {r.ratio:.2f})")


if __name__ == "__main__":
    main()
