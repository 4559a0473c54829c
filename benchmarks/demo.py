"""The closed loop's figures: `recloop demo` in a fresh temporary home, as `make demo` runs it.

``.venv/bin/python -m benchmarks.demo --json`` (add ``--movielens PATH`` for a MovieLens world)

Records how long the whole loop takes (goal: under 15 minutes on these 2 cores), how many
simulated hours the degradation took to detect (and how many hours before the shift raised
a degradation alarm, false alarms), how close the hourly CTR estimates came to the
simulator's true CTR and how often their 95% intervals held it, the true CTR before the
shift, after it (the hours the champion the shift found served alone, until another version
first served) and once the retrained champion served, and that last one against the
old champion's replayed on the same requests (the recovery, with its interval's lower end),
and, on the same requests, a random slate's and the best possible slate's (the floor and the
ceiling, ``recloop.counterfactual.replay`` with references).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results import Row, add_output_options, publish
from recloop.demo import Demo, DemoConfig
from recloop.settings import Settings


def detection(detected: list[int], shift_hour: int) -> dict[str, int | None]:
    """``detected``: the hours that raised a degradation alarm. How many hours after the
    shift the first of them at or after it came (None when none did), and how many came
    before the shift: false alarms (nothing had shifted yet), counted apart rather than read
    as a detection with a negative delay."""
    after = [hour for hour in detected if hour >= shift_hour]
    return {"hours_to_detect": min(after) - shift_hour if after else None,
            "false_alarms_before_shift": sum(hour < shift_hour for hour in detected)}  # fmt: skip


def after_shift_ctr(hours: list[dict[str, Any]], shift_hour: int) -> float | None:
    """The true CTR after the shift, before the loop reacted: the mean over the hours from
    the shift on that the champion the shift found (the version that served most of the
    shift hour) served alone, until another version first served after the shift hour (None
    when there are none). ``hours``: the demo summary's per-hour records (``hour``,
    ``true_ctr``, ``served_versions``). An hour a later champion served, in whole or in
    part, measures the loop's recovery, not the shift (``true_ctr_new_champion`` is the last
    champion's)."""
    records = sorted((r for r in hours if r["hour"] >= shift_hour), key=lambda r: r["hour"])
    if not records or not records[0]["served_versions"] or records[0]["hour"] != shift_hour:
        return None
    at_shift = records[0]["served_versions"]
    old = max(at_shift, key=at_shift.__getitem__)
    ctrs = []
    for record in records:
        versions = set(record["served_versions"] or {})
        if record["hour"] > shift_hour and versions - {old}:
            break  # replaced: every hour from here on is the loop's doing
        if versions == {old}:
            ctrs.append(record["true_ctr"])
    return float(np.mean(ctrs)) if ctrs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=DemoConfig.hours)
    parser.add_argument("--shift-hour", type=int, default=4)
    parser.add_argument("--movielens", type=Path, help="a MovieLens folder to build the world")
    parser.add_argument("--home", type=Path, help="a fresh folder to run in and keep (default: "
                        "a temporary one, removed after)")  # fmt: skip
    parser.add_argument("--gate-protocol", choices=("P1", "recent"), default="P1",
                        help="promotion.protocol for the demo's training runs")  # fmt: skip
    parser.add_argument("--gate-criterion", choices=("offline", "off_policy"),
                        default=DemoConfig.gate_criterion,
                        help="promotion.criterion for the demo's training runs")  # fmt: skip
    parser.add_argument("--trending-half-life", type=float, help="popularity as a trending "
                        "model with this half life in hours")  # fmt: skip
    parser.add_argument("--models", help="comma-separated candidate kinds the demo's training "
                        "runs train (default: DemoConfig's)")  # fmt: skip
    parser.add_argument("--policy", choices=("epsilon_greedy", "plackett_luce"),
                        default=DemoConfig.policy,
                        help="the service's exploring policy")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=DemoConfig.temperature,
                        help="plackett_luce's temperature")  # fmt: skip
    parser.add_argument("--seed", type=int, default=DemoConfig.seed,
                        help="seed of the world and of the simulated users' requests and "
                        "clicks: every run with the same seed draws the same luck, so "
                        "repeated runs check the intervals independently only across "
                        "seeds (RESULTS.md records the default's)")  # fmt: skip
    add_output_options(parser)
    args = parser.parse_args()

    movielens = str(args.movielens.resolve()) if args.movielens else None
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    config = DemoConfig(hours=args.hours, shift_hour=args.shift_hour, movielens=movielens,
                        gate_protocol=args.gate_protocol, gate_criterion=args.gate_criterion,
                        trending_half_life_hours=args.trending_half_life,
                        policy=args.policy, temperature=args.temperature, seed=args.seed,
                        **({"models": models} if models else {}))  # fmt: skip
    if (config.gate_protocol, config.gate_criterion, config.trending_half_life_hours,
            config.models, config.policy, config.temperature, config.seed) != (
            "P1", DemoConfig.gate_criterion, None, DemoConfig.models, DemoConfig.policy,
            DemoConfig.temperature, DemoConfig.seed):  # fmt: skip
        args.no_record = True  # RESULTS.md's demo rows are the defaults' (make demo's)
    if args.home is not None:
        summary = Demo(Settings(home=args.home.resolve()), config, echo=print).run()
    else:
        with tempfile.TemporaryDirectory(prefix="recloop-demo-") as folder:
            summary = Demo(Settings(home=Path(folder) / "home"), config, echo=print).run()
    hours = summary["hours"]
    world = (f"MovieLens {args.movielens.name} world" if movielens
             else f"{config.users} users, {config.items} items")  # fmt: skip
    protocol = (
        f"{config.hours} simulated hours x {config.requests_per_hour} requests, shift at hour "
        f"{config.shift_hour}; {world}"
    )
    served_from = summary["new_champion_served_from_hour"]
    before = [h["true_ctr"] for h in hours if h["hour"] < config.shift_hour]
    after = after_shift_ctr(hours, config.shift_hour)
    retrained = [
        h["true_ctr"] for h in hours if served_from is not None and h["hour"] >= served_from
    ]
    detected = detection(summary["drift_detected_hours"], config.shift_hour)
    to_detect = detected["hours_to_detect"]
    errors = [abs(h["ctr"] - h["true_ctr"]) for h in hours if h["ctr"] is not None]
    rows = [
        Row("demo", "seconds", summary["seconds"], "s", "goal", 900.0, protocol=protocol),
        Row("demo", "hours_to_detect", to_detect if to_detect is not None else np.nan,
            "h", "shift hour", 0.0, protocol=protocol),
        Row("demo", "false_alarms_before_shift", detected["false_alarms_before_shift"],
            "hours", "goal", 0.0, protocol=protocol),
        Row("demo", "asset_triggered_training_runs",
            len(summary["asset_triggered_training_runs"]), "runs", "goal", 1.0, protocol=protocol),
        Row("demo", "ctr_interval_coverage", summary["ctr_interval_coverage"], "share", "goal",
            0.9, protocol=protocol, digits=2),
        Row("demo", "ctr_abs_error", float(np.mean(errors)), "CTR", "none", 0.0,
            protocol=protocol, digits=4),
        Row("demo", "true_ctr_before_shift", float(np.mean(before)), "CTR", "none", 0.0,
            protocol=protocol, digits=4),
        Row("demo", "true_ctr_after_shift", after if after is not None else np.nan, "CTR",
            "before shift", float(np.mean(before)), protocol=protocol, digits=4),
        Row("demo", "true_ctr_new_champion", float(np.mean(retrained)) if retrained else np.nan,
            "CTR", "before shift", float(np.mean(before)), protocol=protocol, digits=4),
    ]  # fmt: skip
    recovery = summary["recovery"]
    if recovery is not None:
        # The same requests replayed through both champions (recloop.counterfactual): the
        # new one's true CTR against the old one's, and their paired difference's interval.
        gain = recovery["gain"]
        rows += [
            Row("demo", "replayed_true_ctr_new_champion", recovery["new_true_ctr"], "CTR",
                "old champion, same requests", recovery["old_true_ctr"],
                protocol=protocol, digits=4),
            Row("demo", "replayed_gain", gain["value"], "CTR", "none", 0.0,
                protocol=protocol, digits=4),
            # The ceiling on the same requests: each one's best slate by the world's truth.
            Row("demo", "replayed_best_true_ctr", recovery["best_true_ctr"], "CTR",
                "new champion, same requests", recovery["new_true_ctr"],
                protocol=protocol, digits=4),
            # The floor on the same requests: a uniformly random slate of the same items.
            Row("demo", "replayed_random_true_ctr", recovery["random_true_ctr"], "CTR",
                "new champion, same requests", recovery["new_true_ctr"],
                protocol=protocol, digits=4),
            Row("demo", "replayed_gain_low", gain["low"], "CTR", "none", 0.0,
                protocol=protocol, digits=4),
        ]  # fmt: skip
    if movielens:  # beside the synthetic world's rows, not in their place
        for row in rows:
            row.metric = f"{row.metric} (MovieLens {args.movielens.name})"
    publish(rows, args, lambda r: f"{r.metric}: {r.value:.4f} (reference {r.reference_value})")


if __name__ == "__main__":
    main()
