"""What the service does, without HTTP: recommend, rank, feedback, similar items, status.

``serving/service.py`` is a thin BentoML layer over one ``Engine``; the engine is plain Python
with plain data in and out, so every behaviour here is testable without a server.

A request reads the current ``ModelSet`` once (see ``serving.models``), so a model swap never
mixes versions within a request. Every slate served is logged as impression events (slot,
propensity, model version, policy, request id); the monitoring DAG estimates everything from
them. Impressions are appended by a background writer every ``impression_flush_seconds``, off
the request path; feedback is appended before it is acknowledged.

Items that entered the catalogue after the serving model's training (``serving.catalogue``)
join ``/recommend``'s candidates, scored from their text, when the model reads text; the watch
thread encodes their texts before any request uses them (``_refresh_catalogue``).

The model APIs run on the event loop (serving/service.py), except a request that may run the
text encoder or wait for it (``off_the_loop``): encoding takes 5-20 ms a text, and on the loop
it would stall every request, ``/healthz`` included.

``/readyz`` is open (no API key), so it names a background failure by its exception class
only; the service log has the whole message (``_log_failure``), with the configured secrets
blanked out.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from recloop.contracts import Event, EventType
from recloop.redaction import log_failure
from recloop.settings import Settings
from serving.catalogue import NO_NEW_ITEMS, Catalogue, NewItems, read_catalogue
from serving.models import POSITIVE_EVENTS, Deployment, ModelSet, ModelWatcher
from serving.policies import Candidates, make_policy, top
from serving.schemas import (
    FeedbackRequest,
    Profile,
    RankRequest,
    RecommendRequest,
    SimilarItemsRequest,
)
from training.data import UserQuery, item_text

log = logging.getLogger("recloop.serving")

TEXT_CHUNK = 16  # new item texts encoded per hold of the text lock (about 90 ms of MiniLM)
SEE_LOG = "see the service log"


def limit_compute_threads(threads: int) -> None:
    """BLAS (numpy) and torch thread pools of this process, to ``serving.compute_threads``."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    torch.set_num_threads(threads)


class Engine:
    # Set by the watch thread while it encodes new items' texts, a chunk at a time under the
    # text lock: requests that would wait for that lock go to a thread meanwhile
    # (``off_the_loop``). A class default, so that an engine built piecemeal (the unit tests)
    # has it too.
    encoding_texts: bool = False

    def __init__(self, settings: Settings):
        from recloop.eventlog import open_event_log
        from serving.features import OnlineFeatures

        self.settings = settings
        config = settings.serving
        limit_compute_threads(config.compute_threads)
        self.policy = make_policy(
            config.policy, epsilon=config.epsilon, temperature=config.temperature,
            draws=config.thompson_draws, prior_strength=config.thompson_prior_strength,
        )  # fmt: skip
        self.events = open_event_log(settings)
        try:
            self.features = OnlineFeatures(settings)
            # The first Feast read opens the online store and parses the registry (about half
            # a second): done here, so that no client's first request pays for it.
            self.features.recent_clicks(["warm-up"])
            self.watcher = ModelWatcher(settings, self.events)
            self.watcher.refresh()
        except BaseException:
            self.events.close()
            raise
        self.item_counts: dict[str, tuple[float, float]] = {}
        # New items: the catalogue and the deployments whose new items' texts are encoded,
        # published together once encoded (a request reads the pair once).
        self.published = PublishedCatalogue(Catalogue(), frozenset())
        self.catalogue_error: str | None = None  # the whole message, as logged
        self.catalogue_error_shown: str | None = None  # what /readyz says (the class only)
        self._catalogue_due = 0.0
        self._text_lock = threading.Lock()  # the text models' vector cache is not thread-safe
        self._vectors: tuple[Any, ...] = ()  # (key, new items, ids, vectors, rows) last built
        self._refresh_catalogue()
        self._refresh_item_counts()  # after the catalogue: its new items are counted too
        self.impressions = ImpressionWriter(self.events, config.impression_flush_seconds)
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_loop, name="recloop-watch", daemon=True)
        self._watch.start()

    # -- endpoints ---------------------------------------------------------------------------

    def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        context = request.context.model_dump(exclude_none=True) if request.context else {}
        arm, deployment, query, served_by, fresh = self._resolve(
            request.user_id, context, request.profile
        )
        model = deployment.model
        answered = None if served_by == "popularity" else query
        scores = slate_scores(model, [answered], exclude_seen=request.exclude_seen)[0]
        ids = model.item_ids
        if answered is not None:
            new_ids, new_scores = self._new_item_scores(deployment, query, request.exclude_seen)
            if new_ids:
                scores, ids = np.concatenate([scores, new_scores]), [*ids, *new_ids]
        pool = _finite_top(scores, self.settings.serving.candidates)
        items = [ids[i] for i in pool]
        unscored = self._unscored_new_items(deployment, query, request.exclude_seen)
        items += unscored  # positions from len(pool) on: no score
        clicks, shown = self._counts(items)
        request_id = uuid.uuid4().hex
        # The draw is reproducible from the id. Greedy draws nothing at random, and seeding a
        # generator costs more than its whole draw (13 us).
        rng = np.random.default_rng(int(request_id, 16)) if self.policy.draws_at_random else None
        slate = self.policy.draw(
            Candidates(scores[pool], clicks, shown, unscored=len(unscored)), request.k, rng
        )
        now = datetime.now(UTC)
        chosen = [
            {"item_id": items[c], "slot": slot,
             "score": float(scores[pool[c]]) if c < len(pool) else None, "propensity": float(p)}
            for slot, (c, p) in enumerate(zip(slate.indices, slate.propensities, strict=True))
        ]  # fmt: skip
        # Every shown item's probability in every slot (the position-based estimators' input),
        # its own slot's floored as the logged propensity is: the contract has them agree.
        everywhere = np.array(slate.slot_propensities, dtype=np.float64)
        np.fill_diagonal(everywhere, [max(row["propensity"], 1e-12) for row in chosen])
        # Built without validation: every value is the service's own, and this runs once per
        # slot. One event per request (model_construct), copied per slot with what differs
        # (model_copy: half model_construct's time). Ids: one random base per request, + slot.
        base = uuid.uuid4().int & ~0xFF
        first = Event.model_construct(
            event_id=uuid.UUID(int=base), ts=now, user_id=request.user_id, item_id="",
            event_type=EventType.impression, request_id=request_id, position=0, propensity=1.0,
            slot_propensities=[], model_version=deployment.version, policy=self.policy.name,
            value=None, context={**context, "arm": arm, "served_by": served_by},
        )  # fmt: skip
        self.impressions.put([
            first.model_copy(update={
                "event_id": uuid.UUID(int=base | row["slot"]), "item_id": row["item_id"],
                "position": row["slot"], "propensity": max(row["propensity"], 1e-12),
                "slot_propensities": slots.tolist(),
            })
            for row, slots in zip(chosen, everywhere, strict=True)
        ])  # fmt: skip
        return {
            "request_id": request_id, "user_id": request.user_id, "items": chosen,
            "model_version": deployment.version, "policy": self.policy.name, "arm": arm,
            "served_by": served_by, "fresh_clicks": len(fresh),
        }  # fmt: skip

    def rank(self, request: RankRequest) -> dict[str, Any]:
        context = request.context.model_dump(exclude_none=True) if request.context else {}
        published = self.published
        # Items known only by text: those the request describes, and catalogue items named by
        # id (a model that reads no text hands the request to one that does, as for the former).
        by_text = [i.item_id for i in request.new_items]
        by_text += [i for i in request.item_ids if published.catalogue.text_of(i) is not None]
        _, deployment, query, _, _ = self._resolve(request.user_id, context, None, by_text)
        model = deployment.model
        ids = [*request.item_ids, *(item.item_id for item in request.new_items)]
        scores = model.score([query], ids)[0]
        first_new = len(request.item_ids)
        texts_of = {
            first_new + n: (item_text(item.model_dump()), tuple(item.categories))
            for n, item in enumerate(request.new_items) if item.item_id not in model.item_index
        }  # fmt: skip
        # The catalogue's new items as /recommend has them: encoded, within the limit.
        new = self._new_items(published, deployment)
        for position, item in enumerate(request.item_ids):
            if item in new.text_by_id:
                texts_of[position] = (new.text_by_id[item], new.categories_by_id[item])
        from_text = list(texts_of)
        if from_text and model.reads_item_text:
            # The request's own texts are encoded first, TEXT_CHUNK per hold of the text lock
            # (the model keeps the vectors): a request on the event loop that needs the lock
            # meanwhile waits for one chunk, not for up to 100 texts (``off_the_loop``).
            # The catalogue's new items are encoded already (the watch thread's work).
            own = [texts_of[p] for p in from_text if p >= first_new]
            for start in range(0, len(own), TEXT_CHUNK):
                chunk_texts, chunk_categories = zip(*own[start : start + TEXT_CHUNK], strict=True)
                with self._text_lock:
                    model.text_item_embeddings(chunk_texts, chunk_categories)
            texts, categories = zip(*texts_of.values(), strict=True)
            with self._text_lock:
                scores[from_text] = model.score_texts([query], texts, categories)[0]
        else:
            from_text = []  # no model reads item text: they rank last, as unknown ids do
        scored_from_text = set(from_text)
        return {
            "user_id": request.user_id,
            "items": [
                {"item_id": item, "score": float(score), "known": item in model.item_index,
                 "from_text": position in scored_from_text}
                for position, (item, score) in enumerate(zip(ids, scores, strict=True))
            ],
            "model_version": deployment.version,
        }  # fmt: skip

    def feedback(self, request: FeedbackRequest) -> dict[str, Any]:
        # Acknowledged only once durable: append returns after the fsync (or the commit).
        result = self.events.append(request.events)
        clicks = [
            (e.user_id, e.item_id, e.ts) for e in request.events
            if e.event_type.value in POSITIVE_EVENTS
        ]  # fmt: skip
        users = self.features.push_clicks(clicks)
        return {"appended": result.appended, "duplicates": result.duplicates,
                "users_refreshed": users}  # fmt: skip

    def similar_items(self, request: SimilarItemsRequest) -> dict[str, Any]:
        deployment = self.watcher.current.champion
        model = deployment.model
        # A text-reading model also places the catalogue's items it never trained on.
        ids, vectors, new_rows = self._vectors_with_new_items(deployment)
        row = model.item_index.get(request.item_id)
        if row is None:
            row = new_rows.get(request.item_id)
        if row is None:
            # A 200 that says so, as /rank does: BentoML's own 404 body breaks its schema.
            return {"item_id": request.item_id, "known": False, "items": [],
                    "model_version": deployment.version}  # fmt: skip
        similarity = vectors @ vectors[row]
        similarity[row] = -np.inf
        return {
            "item_id": request.item_id,
            "known": True,
            "items": [
                {"item_id": ids[i], "similarity": float(similarity[i])}
                for i in _finite_top(similarity, request.k)
            ],
            "model_version": deployment.version,
        }  # fmt: skip

    def off_the_loop(self, request: RecommendRequest | RankRequest | SimilarItemsRequest) -> bool:
        """Whether ``request`` may run the text encoder (a profile's text, /rank's new items:
        0.5-2 s for 100 texts) or wait for the text lock while the encoder holds it: the
        service runs such a request in a thread, since on the event loop it would stall
        every other request for as long. The rest (the benchmarked path) stays on the loop.

        The lock's state is read before the request takes it: a request that finds it free
        may still wait for one chunk (``TEXT_CHUNK`` texts, about 90 ms), if an encoder takes
        it in between; every holder encodes at most a chunk per hold."""
        if self.encoding_texts or self._text_lock.locked():
            return True
        if isinstance(request, RecommendRequest):
            return request.profile is not None and bool(request.profile.text)
        if isinstance(request, RankRequest):
            return bool(request.new_items)
        return False

    def status(self) -> dict[str, Any]:
        try:
            models = self.watcher.current.describe()
        except LookupError:
            models = None
        # Impressions feed every estimate the monitoring makes: while they cannot be logged
        # the instance reports itself unready, until an append succeeds again.
        reason = None
        if models is None:
            reason = "no model loaded yet"
        elif self.impressions.failing:
            reason = f"impressions cannot be logged: the last append failed ({SEE_LOG})"
        return {
            "ready": reason is None,
            "reason": reason,
            "models": models,
            "policy": self.policy.name,
            "challenger_share": self.settings.serving.challenger_share,
            "last_refresh_error": self.watcher.last_error,
            "catalogue": {**self.published.describe(), "error": self.catalogue_error_shown},
            "impressions_pending": self.impressions.pending(),
            "impression_failures": self.impressions.failures,
        }

    def close(self) -> None:
        self._stop.set()
        self._watch.join(timeout=10)
        self.impressions.close()
        self.events.close()

    # -- helpers -----------------------------------------------------------------------------

    def arm(self, models: ModelSet, user_id: str) -> tuple[str, Deployment]:
        """Champion or challenger, by a stable hash of the user id (the same user always
        lands in the same arm, across requests and replicas)."""
        share = self.settings.serving.challenger_share
        if models.challenger is None or share <= 0:
            return "champion", models.champion
        digest = hashlib.sha256(f"recloop-split:{user_id}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") / 2**64
        return ("challenger", models.challenger) if bucket < share else (
            "champion", models.champion)  # fmt: skip

    def _resolve(
        self,
        user_id: str,
        context: dict[str, Any],
        profile: Profile | None,
        item_ids: list[str] | None = None,
    ) -> tuple[str, Deployment, UserQuery, str, list[str]]:
        """Who answers and with what: (arm, deployment, query, served_by, fresh clicks).

        The traffic arm's model answers with what it knows of the user, plus any pushed
        clicks; an unknown user with neither clicks nor a profile gets popularity. When
        ``item_ids`` (candidates known by their text) holds items the arm's model never saw
        and cannot read the text of, the text-reading profile model answers instead: two
        models' scores do not rank together."""
        models = self.watcher.current  # read once: the whole request uses this set
        arm, deployment = self.arm(models, user_id)
        if (
            item_ids
            and models.profile is not None
            and not deployment.model.reads_item_text
            and models.profile.model.reads_item_text
            and any(item not in deployment.model.item_index for item in item_ids)
        ):
            deployment = models.profile
        fresh = self.features.recent_clicks([user_id])[0]
        attributes = (
            {"age": profile.age, "gender": profile.gender, "occupation": profile.occupation}
            if profile is not None else None
        )  # fmt: skip
        text = profile.text if profile is not None else None
        answer = user_query(deployment.model, user_id, fresh, context, attributes, text)
        if answer is not None:
            query, served_by = answer
            return arm, deployment, query, served_by, fresh
        if profile is not None and models.profile is not None:
            query = UserQuery(user_id, (), attributes, text, context)
            return arm, models.profile, query, "profile", fresh
        return arm, deployment, UserQuery(user_id, (), None, None, context), "popularity", fresh

    def _new_items(self, published: PublishedCatalogue, deployment: Deployment) -> NewItems:
        """The catalogue items ``deployment``'s model never trained on (newest first, at most
        ``serving.new_items``) and their texts, once the watch thread has encoded them; none
        for a model that reads no text (the watch thread encodes only for those)."""
        key = (deployment.alias, deployment.version)
        if key not in published.encoded:
            return NO_NEW_ITEMS
        return published.catalogue.new_items(key, deployment.model.item_index,
                                             self.settings.serving.new_items)  # fmt: skip

    def _new_item_scores(
        self, deployment: Deployment, query: UserQuery, exclude_seen: bool
    ) -> tuple[list[str], np.ndarray]:
        """The new items (``_new_items``) and their scores from their text. (The text path
        computes the user's vector again: a two-tower user tower pass, about 0.1 ms.)"""
        new = self._new_items(self.published, deployment)
        if not new.ids:
            return [], np.empty(0)
        ids = new.ids
        with self._text_lock:
            scores = deployment.model.score_texts([query], new.texts, new.categories)[0].astype(
                np.float64
            )
        if exclude_seen and query.history:
            seen = set(query.history)
            scores[[n for n, item in enumerate(ids) if item in seen]] = -np.inf
        return ids, scores

    def _unscored_new_items(
        self, deployment: Deployment, query: UserQuery, exclude_seen: bool
    ) -> list[str]:
        """The catalogue items ``deployment``'s model never trained on and cannot read the
        text of (newest first, at most ``serving.new_items``), for the policy's exploration
        alone; none when the policy does not explore them or the setting is off (a model that
        reads text has scored them already, ``_new_item_scores``)."""
        config = self.settings.serving
        model = deployment.model
        if (not config.explore_new_items or not self.policy.explores_unscored
                or model.reads_item_text or not config.new_items):  # fmt: skip
            return []
        new = self.published.catalogue.new_items(
            (deployment.alias, deployment.version), model.item_index, config.new_items
        )
        # Looked up from the history's side: a history is short, the new items may be
        # thousands, and a user has seldom seen any of them (90 us a request, filtered the
        # other way round over 2,000).
        if exclude_seen and query.history:
            seen = {item for item in query.history if item in new.text_by_id}
            if seen:
                return [item for item in new.ids if item not in seen]
        return new.ids

    def _vectors_with_new_items(
        self, deployment: Deployment
    ) -> tuple[list[str], np.ndarray, dict[str, int]]:
        """(ids, unit item vectors, row of each new item): the model's items, then the new
        items a text-reading model places by their text; built once per serving version and
        list of its new items (so a catalogue refresh leaves a model that reads no text, whose
        co-occurrence vectors are the costly ones, with the vectors it had)."""
        key = (deployment.alias, deployment.version)
        new = self._new_items(self.published, deployment)
        new_ids = new.ids
        cached = self._vectors
        if cached and cached[0] == key and cached[1] is new:
            return cached[2], cached[3], cached[4]
        model = deployment.model
        vectors = model.item_embeddings()
        if vectors is None:  # co-occurrence: items alike when the same users liked them
            histories = list(model.histories.values())
            vectors = np.zeros((len(model.item_ids), len(histories)), dtype=np.float32)
            for column, history in enumerate(histories):
                rows = [model.item_index[i] for i in history if i in model.item_index]
                vectors[rows, column] = 1.0
        ids, vectors = list(model.item_ids), _unit_rows(vectors)
        if new_ids:
            with self._text_lock:
                new_vectors = _unit_rows(model.text_item_embeddings(new.texts, new.categories))
            ids, vectors = [*ids, *new_ids], np.vstack([vectors, new_vectors])
        rows = {item: len(model.item_ids) + n for n, item in enumerate(new_ids)}
        self._vectors = (key, new, ids, vectors, rows)  # only the newest is kept
        return ids, vectors, rows

    def _refresh_catalogue(self) -> None:
        """Re-read the catalogue when due; encode the texts of the items each served text
        model never trained on, a few at a time (a request waits at most for one chunk); then
        publish the catalogue and what is encoded together. A failure keeps what was
        published before, and ``/readyz`` says what failed."""
        config = self.settings.serving
        published = self.published
        catalogue = published.catalogue
        if time.monotonic() >= self._catalogue_due:
            self._catalogue_due = time.monotonic() + config.catalogue_seconds
            try:
                fresh = read_catalogue(self.settings)
            except Exception as error:  # keep the catalogue read before; readyz says why
                self.catalogue_error, self.catalogue_error_shown = _log_failure(
                    self.settings, "catalogue not refreshed; still serving the one read before",
                    error, logging.WARNING, trace=False,  # a missing file says it all
                )  # fmt: skip
            else:
                self.catalogue_error = self.catalogue_error_shown = None
                if not fresh.same_items(catalogue):
                    catalogue = fresh
        try:
            models = self.watcher.current
        except LookupError:
            return
        wanted = {
            (d.alias, d.version): d for d in (models.champion, models.challenger, models.profile)
            if d is not None and d.model.reads_item_text and config.new_items and len(catalogue)
        }  # fmt: skip
        if catalogue is published.catalogue and set(wanted) == published.encoded:
            return
        self.encoding_texts = True  # requests that would wait for the lock: to a thread
        try:
            for key, deployment in wanted.items():
                if catalogue is published.catalogue and key in published.encoded:
                    continue
                model = deployment.model
                new = catalogue.new_items(key, model.item_index, config.new_items)
                for start in range(0, len(new.texts), TEXT_CHUNK):
                    chunk = slice(start, start + TEXT_CHUNK)
                    with self._text_lock:  # encoded once, kept by the model for its scoring
                        model.text_item_embeddings(new.texts[chunk], new.categories[chunk])
        except Exception as error:
            detail, shown = _log_failure(
                self.settings, "new items not encoded; still serving what was published before",
                error, logging.ERROR,
            )  # fmt: skip
            self.catalogue_error = f"encoding new items: {detail}"
            self.catalogue_error_shown = f"encoding new items: {shown}"
            return
        finally:
            self.encoding_texts = False
        self.published = PublishedCatalogue(catalogue, frozenset(wanted))

    def _counts(self, items: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Each item's (clicks, impressions), for a policy that reads them (Thompson sampling);
        None for the others (``_refresh_item_counts`` keeps counts only for the former)."""
        if not self.policy.reads_counts:
            return None, None
        counts = self.item_counts
        pairs = [counts.get(item, (0.0, 0.0)) for item in items]
        return np.array([c for c, _ in pairs]), np.array([s for _, s in pairs])

    def _refresh_item_counts(self) -> None:
        if not self.policy.reads_counts:
            return
        # The champion's items and the catalogue's newer ones, which exploration shows too.
        items = list(dict.fromkeys([*self.watcher.current.champion.model.item_ids,
                                    *self.published.catalogue.item_ids]))  # fmt: skip
        clicks, shown = self.features.item_counts(items)
        self.item_counts = dict(zip(items, zip(clicks, shown, strict=True), strict=True))

    def _watch_loop(self) -> None:
        while not self._stop.wait(self.settings.serving.watch_seconds):
            try:
                self.watcher.refresh()
                self._refresh_item_counts()
            except Exception as error:  # keep serving what is loaded; readyz says why
                _, self.watcher.last_error = _log_failure(
                    self.settings, "model refresh failed; still serving the loaded versions",
                    error, logging.ERROR,
                )  # fmt: skip
            self._refresh_catalogue()  # catches its own failures (catalogue_error)


@dataclass(frozen=True)
class PublishedCatalogue:
    """The catalogue requests use, and the (alias, version) of each deployment whose new
    items' texts are encoded: replaced whole, so a request never sees one without the other."""

    catalogue: Catalogue
    encoded: frozenset[tuple[str, str]]

    def describe(self) -> dict[str, Any]:
        return {**self.catalogue.describe(),
                "new_items_for": sorted(f"{a} v{v}" for a, v in self.encoded)}  # fmt: skip


class ImpressionWriter:
    """Appends impression events in the background, one batch every ``flush_seconds``.

    Every append ends in an fsync (or a commit), so the writer waits out the interval instead
    of appending whenever anything is queued, which under load meant an append and an fsync
    for every request or two. The interval is short (20 ms by default) because an append
    serialises its events holding the GIL: a 0.2 s batch held requests back (p99 at 300
    requests/s rose from about 8 to 13-19 ms; at 20 ms it is 8-10 ms, benchmarks.serving).
    A crash loses at most ``flush_seconds`` of impressions, which no client was promised.

    A failed append is tried again after each of ``RETRY_SECONDS`` (a passing fault, such as
    a dropped database connection, costs nothing); a batch that fails every try is dropped
    and counted in ``failures``, and ``failing`` (the last batch was dropped) makes the
    service unready until an append succeeds again. An unready instance may get no traffic
    (a load balancer that reads /readyz), hence no new impressions to try the log with: while
    nothing is queued, the dropped batch is tried again every ``PROBE_SECONDS``. Retries rely
    on the event log's contract, idempotent on event_id, for what a failed try may have
    written."""

    RETRY_SECONDS = (0.05, 0.25)  # waits before the 2nd and 3rd tries
    PROBE_SECONDS = 5.0  # how often the dropped batch is tried again while nothing is queued

    def __init__(self, events, flush_seconds: float):
        self.events = events
        self.flush_seconds = flush_seconds
        self.queue: queue.SimpleQueue[list[Event]] = queue.SimpleQueue()
        self.failures = 0  # impressions dropped since the start (and not logged later)
        self.failing = False  # whether the last batch was dropped
        self._dropped: list[Event] = []  # that batch, tried again while nothing else is
        self._probe_at = 0.0
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name="recloop-impressions", daemon=True)
        self.thread.start()

    def put(self, events: list[Event]) -> None:
        self.queue.put(events)

    def pending(self) -> int:
        return self.queue.qsize()

    def close(self) -> None:
        """Append what is queued, then stop."""
        self._closing.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        closing = False
        while not closing:
            closing = self._closing.wait(self.flush_seconds)
            batch: list[Event] = []
            while True:  # everything queued so far, in one append
                try:
                    batch.extend(self.queue.get_nowait())
                except queue.Empty:
                    break
            if batch:
                self._append(batch)
            elif self.failing and time.monotonic() >= self._probe_at:
                self._append(self._dropped, probe=True)

    def _append(self, batch: list[Event], probe: bool = False) -> None:
        """Append ``batch``, trying again after each of ``RETRY_SECONDS``; ``probe``: the
        dropped batch again, counted in ``failures`` already."""
        for wait in (*self.RETRY_SECONDS, None):
            try:
                self.events.append(batch)
            except Exception as error:
                if wait is not None:
                    time.sleep(wait)  # new impressions queue meanwhile; none is lost
                    continue
                if not probe:  # (a failing probe logs nothing: once per outage is enough)
                    self.failures += len(batch)
                    # The class only: a failed insert's message can quote a row (user, item).
                    log.error("could not log %d impressions after %d tries (%s); dropped, "
                              "%d so far", len(batch), len(self.RETRY_SECONDS) + 1,
                              type(error).__name__, self.failures)  # fmt: skip
                self.failing, self._dropped = True, batch
                self._probe_at = time.monotonic() + self.PROBE_SECONDS
            else:
                if probe:
                    self.failures -= len(batch)  # logged after all
                if self.failing:
                    log.warning("impressions are logged again")
                self.failing, self._dropped = False, []
                return


def _log_failure(
    settings: Settings, message: str, error: BaseException, level: int, *, trace: bool = True
) -> tuple[str, str]:
    """Log a background failure (with its traceback when ``trace``) and return (detail,
    shown): the exception's class and message, and what the open ``/readyz`` shows, the
    class alone. An exception's message can name hosts, database users, paths and request
    URLs (psycopg, DuckDB, MLflow's "API request to <tracking URI> failed"): the log gets it
    with the configured secrets blanked out (``recloop.redaction``), and /readyz none of it."""
    detail = log_failure(log, settings, message, error, level, trace=trace)
    return detail, f"{type(error).__name__} ({SEE_LOG})"


def user_query(
    model,
    user_id: str,
    fresh: Sequence[str],
    context: dict[str, Any],
    attributes: dict[str, Any] | None = None,
    text: str | None = None,
) -> tuple[UserQuery, str] | None:
    """The query ``model`` answers for a user it knows (its training history, then the fresh
    clicks: served by ``history``) or who has clicked since (``fresh_clicks``); None for
    anyone else. ``fresh``: the user's pushed clicks, newest first, as Feast returns them.
    The demo's counterfactual replay asks the same question of every registered version."""
    oldest_first = tuple(reversed(fresh))
    known = model.histories.get(user_id)
    if known is not None:
        history = tuple(dict.fromkeys(known + oldest_first))
        return UserQuery(user_id, history, attributes, text, context), "history"
    if fresh:
        return UserQuery(user_id, oldest_first, attributes, text, context), "fresh_clicks"
    return None


def slate_scores(model, queries: Sequence[UserQuery | None], *, exclude_seen: bool) -> np.ndarray:
    """Scores over the catalogue, one row per query, as ``/recommend`` ranks them: the model's
    for a query, popularity (log1p of the training counts) for None (nobody the model can
    answer for); items in a query's history at -inf when ``exclude_seen``."""
    scores = np.empty((len(queries), len(model.item_ids)), dtype=np.float64)
    answered = [row for row, query in enumerate(queries) if query is not None]
    others = [row for row, query in enumerate(queries) if query is None]
    if answered:
        scores[answered] = model.score([queries[row] for row in answered])
    if others:
        scores[others] = np.log1p(model.popularity)
    if exclude_seen:
        for row in answered:
            scores[row, model.history_columns(queries[row].history or ())] = -np.inf
    return scores


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), as float32: dot products are cosines."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _finite_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest finite scores, best first (excluded items score -inf and
    sort last, so they are cut off after the top k)."""
    ranked = top(scores, k)
    return ranked[np.isfinite(scores[ranked])]
