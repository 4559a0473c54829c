"""serving.features: how the service resolves its Feast views when the registry fails.

A stand-in store is enough here: the reads themselves run against real stores in
tests/integration/test_feast_store.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serving.features import PUSH_SOURCE, OnlineFeatures


class Registry:
    """Answers like a FeatureStore's registry calls until ``down`` is set."""

    def __init__(self) -> None:
        self.down = False
        self.reads = 0
        self.view = SimpleNamespace(name="user_recent_activity", join_keys=["user_id"],
                                    stream_source=SimpleNamespace(name=PUSH_SOURCE))  # fmt: skip

    def get_feature_view(self, name: str):
        self.reads += 1
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.view

    def list_stream_feature_views(self) -> list:
        return []

    def list_feature_views(self) -> list:
        return [self.view]


def features(store: Registry, ttl: float) -> OnlineFeatures:
    online = object.__new__(OnlineFeatures)
    online.store, online.views_ttl, online._views = store, ttl, None
    return online


def test_a_registry_outage_keeps_the_views_resolved_before_and_waits_to_retry(caplog) -> None:
    store = Registry()
    online = features(store, ttl=0.0)
    first = online._resolved_views()
    assert (first.pushed, first.join_key) == (["user_recent_activity"], "user_id")
    store.down = True
    online.views_ttl = 3600.0
    online._views = first._replace(at=first.at - 7200.0)  # due for a re-read
    assert online._resolved_views().activity is store.view
    assert "keeping the views resolved before (registry unreachable)" in caplog.text
    reads = store.reads
    online._resolved_views()  # within the interval again: no new attempt
    assert store.reads == reads


def test_without_views_resolved_before_a_registry_failure_is_raised() -> None:
    store = Registry()
    store.down = True
    with pytest.raises(ConnectionError, match="unreachable"):
        features(store, ttl=60.0)._resolved_views()
