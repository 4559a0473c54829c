"""The BentoML service: ``bentoml serve serving.service:Recommender`` (or ``recloop serve``).

A thin layer: each API validates its typed body and calls the ``Engine`` (serving/engine.py),
which holds the models, the policy, the event log and the Feast handle. The ASGI gate
(serving/http.py) checks API keys and body sizes first. The settings are read when this module
is imported, because BentoML's service decorator takes its server config (workers, threads,
access log) at that moment.

The model APIs are ``async``: their work is a few hundred microseconds of numpy, cheaper to run
on the event loop than to hand to a thread. Not so a request that runs the text encoder (a
profile's text, /rank's new items: 5-20 ms a text, up to 2 s for 100) or would wait for it
(``Engine.off_the_loop``): on the loop it would stall every request, ``/healthz`` included, so
it goes to a thread, at most ``serving.threads`` at once. ``feedback`` waits on an fsync and a
Feast write, so it runs in BentoML's thread pool and never blocks the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import bentoml

from recloop.settings import load_settings
from serving.http import ApiGate
from serving.schemas import (
    EXAMPLES,
    FeedbackRequest,
    FeedbackResponse,
    RankRequest,
    RankResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarItemsRequest,
    SimilarItemsResponse,
)

# The body each API takes; each request model carries it as its OpenAPI "example", which the
# docs page puts in "Try it out" (BentoML 1.4 rejects the newer "examples" key).
EXAMPLE_INPUT = EXAMPLES

SETTINGS = load_settings()
CONFIG = SETTINGS.serving


API_PATHS = ["/recommend", "/rank", "/feedback", "/similar_items"]


def _tracing() -> dict:
    """BentoML's OpenTelemetry settings. At sample rate 0 (the default: no traces collected)
    the API paths skip the tracing middleware altogether: it would still build a
    non-recording span per request, which cost 30% of /recommend's throughput (measured with
    benchmarks.serving). With a positive rate every API request is traced at that rate."""
    if CONFIG.tracing_sample_rate > 0:
        return {"sample_rate": CONFIG.tracing_sample_rate}
    return {"sample_rate": 0.0, "excluded_urls": API_PATHS}


def _status() -> dict:
    service = bentoml.get_current_service()
    if service is None or getattr(service, "engine", None) is None:
        return {"ready": False, "models": None, "reason": "starting"}
    return service.engine.status()


@bentoml.service(
    name="recloop",
    workers=CONFIG.workers,
    threads=CONFIG.threads,
    traffic={"timeout": 30},
    tracing=_tracing(),
    logging={"access": {"enabled": CONFIG.access_log}},
    http={"host": CONFIG.host, "port": CONFIG.port},
)
class Recommender:
    """Recommendations from the champion model, with logged propensities."""

    def __init__(self) -> None:
        from serving.engine import Engine

        self.engine = Engine(SETTINGS)
        # For the requests that encode text (``_run``): apart from BentoML's own pool, which
        # serves feedback, so that neither kind can take all the threads from the other.
        self._text_threads = anyio.CapacityLimiter(CONFIG.threads)

    async def _run(self, work: Callable[[Any], dict], request) -> dict:
        """``work(request)``: on the event loop (the fast path, benchmarked), or in a thread
        when the request may run the text encoder (``Engine.off_the_loop``)."""
        if self.engine.off_the_loop(request):
            return await anyio.to_thread.run_sync(work, request, limiter=self._text_threads)
        return work(request)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.engine.close()

    def __is_ready__(self) -> bool:
        return self.engine.status()["ready"]

    @bentoml.api
    async def recommend(self, request: RecommendRequest, /) -> RecommendResponse:
        """Top-k items for a user (known, unknown with a profile, or brand new), drawn by the
        configured policy; each item carries its slot propensity."""
        return RecommendResponse.model_validate(await self._run(self.engine.recommend, request))

    @bentoml.api
    async def rank(self, request: RankRequest, /) -> RankResponse:
        """Point-wise scores of the given candidates for the user."""
        return RankResponse.model_validate(await self._run(self.engine.rank, request))

    @bentoml.api
    def feedback(self, request: FeedbackRequest, /) -> FeedbackResponse:
        """Log user events durably (idempotent on event_id) and push fresh clicks to Feast.
        An event_id already logged with other content is a 422 at ``events.N.event_id``, and
        nothing of the batch is logged."""
        from recloop.eventlog import InvalidEvents

        try:
            return FeedbackResponse.model_validate(self.engine.feedback(request))
        except InvalidEvents as error:
            return _rejected(error)  # BentoML sends a starlette Response as it is

    @bentoml.api
    async def similar_items(self, request: SimilarItemsRequest, /) -> SimilarItemsResponse:
        """Items most alike the given one, by the served model's item vectors."""
        similar = await self._run(self.engine.similar_items, request)
        return SimilarItemsResponse.model_validate(similar)


def _rejected(error) -> Any:
    """The event log's refusal as the gate's 422 (the same shape: field and reason, no
    input quoted)."""
    from starlette.responses import JSONResponse

    detail = [{"field": f"events.{r.index}.{e.field}", "reason": e.reason}
              for r in error.rejections for e in r.errors]  # fmt: skip
    return JSONResponse({"error": f"{len(detail)} invalid field(s)", "detail": detail},
                        status_code=422)  # fmt: skip


Recommender.add_asgi_middleware(
    ApiGate,
    keys=CONFIG.keys(),
    max_body_bytes=CONFIG.max_body_bytes,
    models={
        "recommend": RecommendRequest, "rank": RankRequest, "feedback": FeedbackRequest,
        "similar_items": SimilarItemsRequest,
    },
    status=_status,
)  # fmt: skip
