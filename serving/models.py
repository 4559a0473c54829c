"""Which models the service serves, and how it swaps them.

The service serves the registered version behind the MLflow alias ``champion`` (and
``challenger`` when a traffic split is set), loaded through the model folder's fast path
(``training.registry.download_model``: plain arrays and torch state, no pyfunc call per row).
A text-capable model answers for users the serving model cannot describe (a profile but no
history): the champion itself when its kind reads text and attributes, otherwise the newest
registered ``two_tower`` version.

Swaps are atomic: ``ModelWatcher.current`` returns one immutable ``ModelSet``; a request reads
it once and uses only that for its whole life, and the watcher replaces the reference only
after a new version has loaded completely. A request therefore sees the old set or the new
one, never a mix, and never a half-loaded model. Until any version exists the service serves
popularity counted from the event log, and ``ModelSet.fallback`` says so.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from recloop.eventlog import EventLog
from recloop.settings import Settings
from training.models.base import Recommender

log = logging.getLogger("recloop.serving")

FALLBACK_VERSION = "popularity-fallback"
# Kinds whose user tower reads attributes and profile text: they serve unknown users.
PROFILE_KINDS = ("two_tower",)
# Events that say a user wanted an item (what popularity and fresh activity count).
POSITIVE_EVENTS = ("click", "rating", "purchase")


@dataclass(frozen=True)
class Deployment:
    """One loaded model and where it came from."""

    model: Recommender
    version: str  # the registry version, or FALLBACK_VERSION
    alias: str  # champion, challenger, cold_start or fallback

    @property
    def kind(self) -> str:
        return self.model.kind


@dataclass(frozen=True)
class ModelSet:
    """What the service serves at one moment; replaced whole, never changed in place."""

    champion: Deployment
    challenger: Deployment | None = None
    profile: Deployment | None = None  # serves unknown users from attributes and text

    @property
    def fallback(self) -> bool:
        return self.champion.version == FALLBACK_VERSION

    def describe(self) -> dict[str, Any]:
        def one(d: Deployment | None) -> dict[str, Any] | None:
            return None if d is None else {"version": d.version, "kind": d.kind,
                                           "int8": d.model.quantized}  # fmt: skip

        return {
            "champion": one(self.champion),
            "challenger": one(self.challenger),
            "profile_model": one(self.profile),
            "fallback": self.fallback,
        }


def popularity_from_events(events: EventLog) -> Recommender:
    """Popularity over the event log's positive events: the model before any model exists.

    Raises LookupError when the log has no positive event (nothing to serve at all)."""
    from training.models import create

    table = events.read()
    kinds = table.column("event_type").to_pylist()
    items = table.column("item_id").to_pylist()
    counts = Counter(
        item for item, kind in zip(items, kinds, strict=True) if kind in POSITIVE_EVENTS
    )
    if not counts:
        raise LookupError("no model is registered and the event log holds no positive event")
    model = create("popularity")
    ranked = sorted(counts, key=lambda item: (-counts[item], item))
    model._set_catalogue(ranked)
    model.popularity = np.array([counts[item] for item in ranked], dtype=np.float64)
    return model


def settle_heap() -> None:
    """Collect once, then freeze what survives out of the cyclic collector's sight.

    A loaded service holds about half a million long-lived objects (histories, vocabularies,
    the event log's id set); a full collection walks them all, a pause of about 300 ms measured
    on MovieLens-100K, landing on whichever request happens to trigger it. Frozen objects are
    never walked again (refcounting still frees them). Run after each swap, so the replaced
    model's cycles are collected before the new one is frozen: one pause per swap, in the
    watcher's thread, instead of one at random. That pause still holds the interpreter lock:
    requests in flight during a swap wait for it, once per swap (and every worker swaps within
    the same watch period)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelWatcher:
    """Loads the aliased versions and reloads them when an alias moves."""

    def __init__(self, settings: Settings, events: EventLog):
        self.settings = settings
        self.events = events  # read for the popularity fallback (the service's own log)
        self._current: ModelSet | None = None
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self.last_error: str | None = None

    @property
    def current(self) -> ModelSet:
        current = self._current
        if current is None:
            raise LookupError("no model loaded yet")
        return current

    def refresh(self) -> bool:
        """Check the aliases; load and swap in whatever changed. True when something did."""
        with self._lock:
            new = self._load(self._current)
            changed = new != self._current
            if changed:
                self._current = new  # the swap: one reference assignment
                log.info("serving %s", new.describe())
                settle_heap()
            self.last_error = None
            return changed

    def _load(self, old: ModelSet | None) -> ModelSet:
        from training import registry

        client = registry.configure(self.settings)
        loaded = {} if old is None else {
            d.alias: d for d in (old.champion, old.challenger, old.profile) if d is not None
        }  # fmt: skip

        def deployment(alias: str, version) -> Deployment:
            known = loaded.get(alias)
            if known is not None and known.version == str(version.version):
                return known
            model = registry.download_model(self.settings, str(version.version))
            for part in model.parts():
                if hasattr(getattr(part, "config", None), "text_cache_dir"):
                    # The training machine's text cache is not the service's to write (and
                    # rewriting it per new profile text would cost more than encoding the
                    # text): the model keeps what the service encodes in its own bounded caches.
                    part.config.text_cache_dir = None
            quantization = self.settings.serving.quantization
            if quantization != "none":  # before the swap: no request sees a half-converted model
                model.quantize(text_encoder=quantization == "int8_text")
            return Deployment(model, str(version.version), alias)

        champion_version = registry.alias_version(client, registry.CHAMPION)
        if champion_version is None:
            if old is not None and old.fallback:
                return old
            return ModelSet(Deployment(popularity_from_events(self.events), FALLBACK_VERSION,
                                       "fallback"))  # fmt: skip
        champion = deployment(registry.CHAMPION, champion_version)
        challenger_version = (
            registry.alias_version(client, registry.CHALLENGER)
            if self.settings.serving.challenger_share > 0
            else None
        )
        challenger = (
            deployment(registry.CHALLENGER, challenger_version)
            if challenger_version is not None
            and str(challenger_version.version) != champion.version
            else None
        )
        if champion.kind in PROFILE_KINDS:
            profile = replace(champion, alias="profile")
        else:
            newest = client.search_model_versions(
                f"name = '{registry.MODEL_NAME}' and tags.kind = 'two_tower'",
                order_by=["version_number DESC"],
                max_results=1,
            )
            profile = deployment("profile", newest[0]) if newest else None
        return ModelSet(champion, challenger, profile)
