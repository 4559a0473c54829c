"""What the service reads from and pushes to Feast's online store.

- Fresh activity: ``/feedback`` pushes each user's latest clicks to the push source
  ``user_activity_push`` (view ``user_recent_activity``); ``/recommend`` reads them back, so a
  click changes the next recommendation at once, whichever replica took the click (replicas
  share the online store, not memory). A user's list is not returned when its last push is
  older than the view's TTL (each push carries the older clicks forward, at most
  ``serving.fresh_clicks``): Feast 0.67's online read checks no TTL, so this module does.
- Item counts: impressions and clicks per item from the batch view ``item_features``, the
  evidence of Thompson sampling; read for the whole catalogue at each model refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from recloop.settings import Settings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from feast import FeatureView

PUSH_SOURCE = "user_activity_push"
ACTIVITY_VIEW = "user_recent_activity"
RECENT_CLICK_ITEM_IDS = "recent_click_item_ids"
ITEM_IMPRESSIONS = "item_features:impressions_all_time"
ITEM_CLICKS = "item_features:clicks_all_time"


class _Views(NamedTuple):
    """What the registry says about the fresh-activity views, resolved once in a while."""

    at: float  # time.monotonic() when resolved
    pushed: list[str]  # names of the views the push source feeds
    activity: FeatureView  # the view /recommend reads
    join_key: str  # its key column, read once: FeatureView is @typechecked, each read checked


class OnlineFeatures:
    """The service's handle on Feast (the registry must hold the feature views: the feature
    pipeline's ``feast apply`` puts them there)."""

    def __init__(self, settings: Settings):
        from recloop.features.store import open_store

        self.keep = settings.serving.fresh_clicks
        self.store = open_store(settings)
        self.views_ttl = settings.serving.watch_seconds
        self._views: _Views | None = None
        # Feast's SQLite online store shares one connection across threads: two concurrent
        # pushes fail with "cannot start a transaction within a transaction". One push at a
        # time per process also makes each user's read-merge-write atomic within a replica.
        self._push_lock = threading.Lock()
        self._resolved_views()

    def recent_clicks(self, user_ids: Sequence[str]) -> list[list[str]]:
        """Each user's pushed clicks, newest first (empty when none, or when the user's last
        push is older than the view's TTL)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        views = self._resolved_views()
        view = views.activity
        keys = [EntityKey(join_keys=[views.join_key], entity_values=[Value(string_val=user)])
                for user in user_ids]  # fmt: skip
        # The online store's read of one view, as get_online_features makes it, without
        # what get_online_features adds around it on every call (resolving the feature
        # references through the registry, building and decoding a response protobuf):
        # p50 0.43 -> 0.23 ms per read on Redis (benchmarks.feast_online). online_read is
        # Feast's provider interface; the store's own provider keeps the pushes' connection.
        rows = self.store._get_provider().online_read(
            self.store.config, view, keys, [RECENT_CLICK_ITEM_IDS]
        )
        oldest = datetime.now(UTC) - view.ttl if view.ttl else None
        return [
            [] if values is None or (oldest is not None and pushed_at < oldest)
            else list(values[RECENT_CLICK_ITEM_IDS].string_list_val.val)
            for pushed_at, values in rows
        ]  # fmt: skip

    def push_clicks(self, clicks: Iterable[tuple[str, str, datetime]]) -> int:
        """Fold (user_id, item_id, at) clicks into each user's recent list and push it; the
        number of users updated."""
        by_user: dict[str, list[tuple[datetime, str]]] = {}
        for user, item, at in clicks:
            by_user.setdefault(user, []).append((at, item))
        if not by_user:
            return 0
        users = sorted(by_user)
        with self._push_lock:
            known = self.recent_clicks(users)
            rows = []
            for user, old in zip(users, known, strict=True):
                new = [item for _, item in sorted(by_user[user], reverse=True)]
                merged = list(dict.fromkeys(new + old))[: self.keep]
                rows.append({
                    "user_id": user,
                    "recent_click_item_ids": merged,
                    "last_click_at": max(at for at, _ in by_user[user]),
                    "event_timestamp": datetime.now(UTC),
                })  # fmt: skip
            frame = pd.DataFrame(rows)
            # What FeatureStore.push(to=ONLINE) does, minus two registry walks per call:
            # push() lists every feature view (to find those the push source feeds) and every
            # feature service (to refresh precomputed vectors, which recloop does not use),
            # rebuilding each from its protobuf: two thirds of a push's time, measured. The
            # views fed are resolved once per serving.watch_seconds instead.
            for view in self._resolved_views().pushed:
                self.store.write_to_online_store(view, frame)
        return len(rows)

    def _resolved_views(self) -> _Views:
        """The views the push source feeds and the activity view, re-read from the registry
        after serving.watch_seconds, so that a ``feast apply`` reaches a running service.

        The re-read runs on a request's thread: when it fails, the views resolved before keep
        serving (a warning says why) and the next re-read is a whole interval later, so a
        registry outage neither fails requests nor makes each one retry it."""
        now = time.monotonic()
        if self._views is not None and now - self._views.at <= self.views_ttl:
            return self._views
        try:
            self._views = self._read_views(now)
        except Exception as error:
            if self._views is None:
                raise
            log.warning("Feast registry: keeping the views resolved before (%s)", error)
            self._views = self._views._replace(at=now)
        return self._views

    def _read_views(self, now: float) -> _Views:
        from feast.errors import FeatureViewNotFoundException

        try:
            activity = self.store.get_feature_view(ACTIVITY_VIEW)
        except FeatureViewNotFoundException as error:
            raise RuntimeError(
                f"Feast registry has no {ACTIVITY_VIEW} view: run the feature pipeline "
                "(`recloop features run`) before serving"
            ) from error
        views = [*self.store.list_stream_feature_views(), *self.store.list_feature_views()]
        pushed = [
            view.name for view in views
            if view.stream_source is not None and view.stream_source.name == PUSH_SOURCE
        ]  # fmt: skip
        if not pushed:
            raise RuntimeError(f"Feast registry: no feature view reads {PUSH_SOURCE!r}")
        (join_key,) = activity.join_keys
        return _Views(now, pushed, activity, join_key)

    def item_counts(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(clicks, impressions) per item; 0 for items the batch view does not hold."""
        if not item_ids:
            return np.zeros(0), np.zeros(0)
        rows = self.store.get_online_features(
            features=[ITEM_CLICKS, ITEM_IMPRESSIONS],
            entity_rows=[{"item_id": item} for item in item_ids],
        ).to_dict()
        clicks = np.array([v or 0 for v in rows["clicks_all_time"]], dtype=np.float64)
        shown = np.array([v or 0 for v in rows["impressions_all_time"]], dtype=np.float64)
        return clicks, shown
