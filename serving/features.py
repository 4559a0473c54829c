"""What the service reads from and pushes to Feast's online store.

- Fresh activity: ``/feedback`` pushes each user's latest clicks to the push source
  ``user_activity_push`` (view ``user_recent_activity``); ``/recommend`` reads them back, so a
  click changes the next recommendation at once, whichever replica took the click (replicas
  share the online store, not memory).
- Item counts: impressions and clicks per item from the batch view ``item_features``, the
  evidence of Thompson sampling; read for the whole catalogue at each model refresh.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from recloop.settings import Settings

PUSH_SOURCE = "user_activity_push"
RECENT_CLICKS = "user_recent_activity:recent_click_item_ids"
ITEM_IMPRESSIONS = "item_features:impressions_all_time"
ITEM_CLICKS = "item_features:clicks_all_time"


class OnlineFeatures:
    """The service's handle on Feast (the registry must hold the feature views: the feature
    pipeline's ``feast apply`` puts them there)."""

    def __init__(self, settings: Settings):
        from recloop.features.store import open_store

        self.keep = settings.serving.fresh_clicks
        self.store = open_store(settings)
        self.views_ttl = settings.serving.watch_seconds
        self._views: tuple[float, list[str]] | None = None  # (resolved at, view names)
        # Feast's SQLite online store shares one connection across threads: two concurrent
        # pushes fail with "cannot start a transaction within a transaction". One push at a
        # time per process also makes each user's read-merge-write atomic within a replica.
        self._push_lock = threading.Lock()
        try:
            self.store.get_feature_view("user_recent_activity")
        except Exception as error:
            raise RuntimeError(
                "Feast registry has no user_recent_activity view: run the feature pipeline "
                "(`recloop features run`) before serving"
            ) from error

    def recent_clicks(self, user_ids: Sequence[str]) -> list[list[str]]:
        """Each user's pushed clicks, newest first (empty when none or expired)."""
        rows = self.store.get_online_features(
            features=[RECENT_CLICKS], entity_rows=[{"user_id": u} for u in user_ids]
        ).to_dict()
        return [list(items or []) for items in rows["recent_click_item_ids"]]

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
            for view in self._push_views():
                self.store.write_to_online_store(view, frame)
        return len(rows)

    def _push_views(self) -> list[str]:
        """Names of the feature views the push source feeds (re-read after a while, so that a
        ``feast apply`` that changes them reaches a running service)."""
        import time

        now = time.monotonic()
        if self._views is None or now - self._views[0] > self.views_ttl:
            views = [*self.store.list_stream_feature_views(), *self.store.list_feature_views()]
            names = [
                view.name for view in views
                if view.stream_source is not None and view.stream_source.name == PUSH_SOURCE
            ]  # fmt: skip
            if not names:
                raise RuntimeError(f"Feast registry: no feature view reads {PUSH_SOURCE!r}")
            self._views = (now, names)
        return self._views[1]

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
