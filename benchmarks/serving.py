"""Serving latency and throughput: the real service, driven by wrk from a separate process.

    python -m benchmarks.serving --data ../shared/datasets/ml-100k --json

Builds a fresh home from the MovieLens folder (ingest, feature pipeline, EASE and popularity
trained and the winner promoted), starts ``recloop serve`` and measures, in one run:

- ``healthz_rps``: the framework's ceiling (an endpoint that does nothing), the reference;
- ``recommend_rps`` and ``recommend_ratio`` (the two throughputs divided), closed loop;
- ``recommend_p99_ms`` at about 300 requests/s (wrk paced by a per-connection delay; the rate
  reached is reported beside it);
- ``rank_rps`` (100 candidates per request) and ``feedback_events_per_s`` (batches of 100,
  durable: fsync before the acknowledgement, plus the Feast push).

``--production`` runs the same on the production profile (Postgres event log, warehouse and
MLflow registry, Redis online store; a database of the benchmark's own, removed after), with
``--workers`` service processes (the local event log admits one writer, Postgres any number);
its rows are labelled ``(production, N workers)``.

Needs ``wrk`` (Debian package ``wrk``). Server and load generator share the same 2 cores, as
DESIGN.md's reference figure did.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from benchmarks.production import add_production_options, production_settings
from benchmarks.results import Row, add_output_options, publish
from serving.launch import free_port, wait_ready

KEY = "benchmark-key"
BIN = Path(sys.executable).parent
DURATION = 15
CONNECTIONS = 16

# wrk scripts: request bodies, pacing, and a JSON summary printed on exit.
DONE = """
function done(summary, latency, requests)
  io.write(string.format('{"requests": %d, "seconds": %f, "errors": %d, "non2xx": %d, '
    .. '"p50_ms": %f, "p99_ms": %f}\\n', summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""
POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"
"""
USERS = """
users = {{{users}}}
n = 0
request = function()
  n = n + 1
  local body = '{{"user_id": "' .. users[(n % #users) + 1] .. '", "k": 10}}'
  return wrk.format(nil, "/recommend", nil, body)
end
"""
PACE = """
delay = function() return {delay_ms} end
"""
RANK = """
items = '{items}'
request = function()
  return wrk.format(nil, "/rank", nil, '{{"user_id": "{user}", "item_ids": [' .. items .. ']}}')
end
"""
FEEDBACK = """
math.randomseed(os.time() + {seed})
local function uuid()
  return string.gsub('xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx', '[xy]', function (c)
    local v = (c == 'x') and math.random(0, 15) or math.random(8, 11)
    return string.format('%x', v)
  end)
end
request = function()
  local events = {{}}
  for i = 1, 100 do
    events[i] = '{{"event_id": "' .. uuid() .. '", "ts": "2026-01-05T12:00:00Z", '
      .. '"user_id": "bench-' .. math.random(1, 500) .. '", "item_id": "' .. math.random(1, 1682)
      .. '", "event_type": "click"}}'
  end
  return wrk.format(nil, "/feedback", nil, '{{"events": [' .. table.concat(events, ",") .. ']}}')
end
"""


def _run(args: list[str], env: dict[str, str]) -> None:
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def prepare(data: Path, home: Path, env: dict[str, str]) -> None:
    recloop = str(BIN / "recloop")
    _run([recloop, "init"], env)
    _run([recloop, "ingest", "movielens", str(data)], env)
    _run([recloop, "features", "run"], env)
    _run([recloop, "train", "--models", "popularity,ease"], env)


def wrk(url: str, script: str, connections: int = CONNECTIONS, seconds: int = DURATION) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script + DONE)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", handle.name, url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    os.unlink(handle.name)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MovieLens folder")
    parser.add_argument("--home", type=Path, help="reuse a prepared home (skips training)")
    parser.add_argument("--production", action="store_true", help="on Postgres and Redis")
    parser.add_argument("--workers", type=int, default=1, help="service worker processes")
    add_production_options(parser)
    add_output_options(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk): it is the load generator")
    if args.workers > 1 and not args.production:
        sys.exit("--workers > 1 needs --production: the local event log admits one writer")
    backends = production_settings(args.server, args.redis) if args.production else nullcontext()
    with backends as production:
        publish(
            measure(args, production),
            args,
            lambda r: f"{r.label}: {r.value:,.2f} {r.unit} (ratio {r.ratio:.2f})",
        )


def measure(args: argparse.Namespace, production) -> list[Row]:
    from recloop.settings import Settings

    home = production.home if production else (
        args.home or Path(tempfile.mkdtemp(prefix="recloop-bench-serving-")) / "var")  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECLOOP_")}
    env = {**base, "RECLOOP_HOME": str(home), "RECLOOP_TRAINING__PROTOCOLS": '["P1"]'}
    if production:
        env |= {"RECLOOP_PROFILE": "production",
                "RECLOOP_POSTGRES_URL": production.postgres_url.get_secret_value(),
                "RECLOOP_REDIS_URL": production.redis_url.get_secret_value()}  # fmt: skip
    if production or args.home is None:
        prepare(args.data, home, env)
    port = free_port()
    serve_env = {**env, "RECLOOP_SERVING__API_KEYS": json.dumps([KEY]),
                 "RECLOOP_SERVING__PORT": str(port),
                 "RECLOOP_SERVING__WORKERS": str(args.workers)}  # fmt: skip
    server_log = home / "serve.log"  # where a failed request's reason is found
    with server_log.open("w") as log:
        server = subprocess.Popen(
            [str(BIN / "recloop"), "serve"], env=serve_env, start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            status = wait_ready(url, server, timeout=300)
        except RuntimeError as error:
            sys.exit(str(error))
        from training import registry

        model = registry.download_model(production or Settings(home=home), "champion")
        users = sorted(model.histories)[:200]
        user_list = ", ".join(f'"{u}"' for u in users)
        items = ", ".join(f'"{i}"' for i in model.item_ids[:100])
        post = POST.format(key=KEY)

        wrk(url + "/healthz", "", seconds=5)  # warm-up
        wrk(url + "/recommend", post + USERS.format(users=user_list), seconds=5)
        healthz = wrk(url + "/healthz", "")
        recommend = wrk(url + "/recommend", post + USERS.format(users=user_list))
        # 10 connections, each pausing 30 ms between requests: about 300 requests/s.
        paced_script = post + USERS.format(users=user_list) + PACE.format(delay_ms=30)
        paced = wrk(url + "/recommend", paced_script, connections=10)
        rank = wrk(url + "/rank", post + RANK.format(items=items, user=users[0]))
        feedback = wrk(url + "/feedback", post + FEEDBACK.format(seed=1), connections=8)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    failed = {name: r["errors"] + r["non2xx"] for name, r in
              (("healthz", healthz), ("recommend", recommend), ("paced", paced), ("rank", rank),
               ("feedback", feedback))}  # fmt: skip
    if any(failed.values()):
        sys.exit(f"requests failed during the benchmark: {failed} (server log: {server_log})")
    kind = status["models"]["champion"]["kind"]
    ceiling = healthz["rps"]
    # Production rows carry their setting as the model, and (being keyed by their protocol
    # too) a protocol without measured values, so that a rerun replaces them.
    workers = f"{args.workers} worker" + ("s" if args.workers > 1 else "")
    setting = f"production, {workers}" if production else ""
    paced_at = ("paced at about 300 req/s, 10 connections" if production
                else f"paced at {paced['rps']:.0f} req/s, 10 connections")  # fmt: skip
    durability = "commit before ack" if production else "fsync before ack"
    return [
        Row("serving", "healthz_rps", ceiling, "req/s", "healthz (framework ceiling)", ceiling,
            model=setting),
        Row("serving", "recommend_rps", recommend["rps"], "req/s",
            "healthz (framework ceiling)", ceiling,
            protocol=f"closed loop, 16 connections, {kind} champion, k=10, ml-100k",
            model=setting),
        Row("serving", "recommend_ratio", recommend["rps"] / ceiling, "x", "goal", 0.8,
            protocol="recommend_rps / healthz_rps", digits=2, model=setting),
        Row("serving", "recommend_p99_ms", paced["p99_ms"], "ms", "goal", 15.0,
            protocol=paced_at, model=setting),
        Row("serving", "recommend_p50_ms", paced["p50_ms"], "ms", "goal p99", 15.0,
            protocol=paced_at, digits=2, model=setting),
        Row("serving", "rank_rps", rank["rps"], "req/s", "healthz (framework ceiling)", ceiling,
            protocol="100 candidates per request, closed loop", model=setting),
        Row("serving", "feedback_events_per_s", feedback["rps"] * 100, "events/s", "goal",
            5000.0, protocol=f"batches of 100, {durability} + Feast push, 8 connections",
            model=setting),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
