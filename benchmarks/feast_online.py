"""Feast online reads from Redis (production profile): latency of the serving feature service,
against a plain Redis client reading the same keys in the same run.

A simulated world goes through the production feature pipeline (Postgres warehouse, dbt,
gate, Feast materialisation into Redis) in a database and a Redis database of its own, both
removed afterwards. Then one request at a time, as the service makes them: Feast's
``get_online_features`` of the serving feature service for one (user, item) pair, and the
reference, one pipelined ``HGETALL`` of the same two Redis hashes (the user's and the item's
keys, as Feast serialises them) with redis-py. The difference is what Feast adds on top of
the storage round trip: registry lookup, protobuf decoding, response building.

Second, the service's fresh-click read (``serving.features.OnlineFeatures.recent_clicks``: the
online store's ``online_read`` of the one view, TTL checked by the service) against
``get_online_features`` of the same feature, for users whose clicks were pushed, in the same
run and alternating.

    .venv/bin/python -m benchmarks.feast_online --json
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import timedelta

from benchmarks.production import add_production_options, production_settings
from benchmarks.results import Row, add_output_options, publish
from recloop.settings import Settings

SERVICE = "recommender_v1_serving"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def prepare(settings: Settings, users: int, items: int, days: int) -> None:
    from recloop.features.pipeline import run_pipeline
    from recloop.ingest import ingest_simulation
    from recloop.sources.simulator import WorldConfig

    world = WorldConfig(users=users, items=items, days=days, seed=5)
    ingest_simulation(settings, world, show_progress=True)
    run_pipeline(settings, None, world.start + timedelta(days=days + 1), echo=False)


def measure_fresh_clicks(settings: Settings, requests: int) -> dict[str, list[float]]:
    from datetime import UTC, datetime

    from recloop import warehouse
    from serving.features import ACTIVITY_VIEW, RECENT_CLICK_ITEM_IDS, OnlineFeatures

    features = OnlineFeatures(settings)
    users = list(warehouse.read_frame(settings, "SELECT user_id FROM raw.users").user_id)
    now = datetime.now(UTC)
    features.push_clicks([(user, f"i{n}", now) for user in users for n in range(3)])
    rng = random.Random(1)
    reference = f"{ACTIVITY_VIEW}:{RECENT_CLICK_ITEM_IDS}"
    timings: dict[str, list[float]] = {"service": [], "feast": []}
    for n in range(requests):
        user = rng.choice(users)
        order = ("service", "feast") if n % 2 == 0 else ("feast", "service")
        for what in order:
            started = time.perf_counter()
            if what == "service":
                clicks = features.recent_clicks([user])[0]
            else:
                rows = features.store.get_online_features(
                    features=[reference], entity_rows=[{"user_id": user}]
                ).to_dict()
            timings[what].append((time.perf_counter() - started) * 1000)
        if clicks != list(rows[RECENT_CLICK_ITEM_IDS][0]):
            raise RuntimeError(f"{user}: the two reads differ ({clicks} vs {rows})")
    return timings


def measure(settings: Settings, requests: int) -> dict[str, list[float]]:
    import redis
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from recloop import warehouse
    from recloop.features.store import PROJECT, open_store

    feature_store = open_store(settings)
    service = feature_store.get_feature_service(SERVICE)
    users = list(warehouse.read_frame(settings, "SELECT user_id FROM raw.users").user_id)
    items = list(warehouse.read_frame(settings, "SELECT item_id FROM raw.items").item_id)
    rng = random.Random(0)
    pairs = [(rng.choice(users), rng.choice(items)) for _ in range(requests)]
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())

    def key(name: str, value: str) -> bytes:
        entity = EntityKey(join_keys=[name], entity_values=[Value(string_val=value)])
        return _redis_key(PROJECT, entity, entity_key_serialization_version=3)

    timings: dict[str, list[float]] = {"feast": [], "redis": []}
    found = 0
    for n, (user, item) in enumerate(pairs):
        # Alternate which goes first, so neither always finds the other's warm cache lines.
        order = ("feast", "redis") if n % 2 == 0 else ("redis", "feast")
        for what in order:
            started = time.perf_counter()
            if what == "feast":
                values = feature_store.get_online_features(
                    features=service,
                    entity_rows=[{"user_id": user, "item_id": item}],
                    full_feature_names=True,
                ).to_dict()
            else:
                pipe = client.pipeline(transaction=False)
                pipe.hgetall(key("user_id", user))
                pipe.hgetall(key("item_id", item))
                raw = pipe.execute()
            timings[what].append((time.perf_counter() - started) * 1000)
        found += values["user_features__interactions_all_time"][0] is not None and bool(raw[0])
    client.close()
    if found == 0:
        raise RuntimeError("no request found its user's features: nothing was materialised")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_production_options(parser)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    add_output_options(parser)
    args = parser.parse_args()
    with production_settings(args.server, args.redis) as settings:
        prepare(settings, args.users, args.items, args.days)
        timings = measure(settings, args.requests)
        fresh = measure_fresh_clicks(settings, args.requests)
    protocol = (
        f"{args.requests} sequential requests, 1 user + 1 item each; "
        f"{args.users} users, {args.items} items; local Redis"
    )
    rows = []
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        feast, plain = percentile(timings["feast"], q), percentile(timings["redis"], q)
        rows.append(Row("feast_online", f"serving_service_{name}_ms", feast, "ms",
                        f"redis-py pipelined HGETALL of the same keys ({name})", plain,
                        protocol=protocol, digits=2))  # fmt: skip
    fresh_protocol = (f"{args.requests} sequential reads of one pushed user's clicks; "
                      f"{args.users} users; local Redis")  # fmt: skip
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        ours, feast = percentile(fresh["service"], q), percentile(fresh["feast"], q)
        rows.append(Row("feast_online", f"fresh_clicks_read_{name}_ms", ours, "ms",
                        f"get_online_features of the same feature ({name})", feast,
                        protocol=fresh_protocol, digits=2))  # fmt: skip
    publish(rows, args, lambda r: f"{r.metric}: {r.value:.2f} ms vs {r.reference_value:.2f} ms "
            f"(x{r.ratio:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
