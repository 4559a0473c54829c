"""Reading features back in tests, the same way on both profiles: the latest mart row of each
entity (the warehouse) and the serving feature service's online values (Feast)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from recloop import warehouse
from recloop.features import store
from recloop.settings import Settings


def latest_rows(settings: Settings, mart: str, key: str, at: datetime) -> pd.DataFrame:
    """Each entity's newest row of ``marts.<mart>`` observed at or before ``at``."""
    return warehouse.read_frame(
        settings,
        f"SELECT DISTINCT ON ({key}) * FROM marts.{mart} WHERE observed_at <= $at "
        f"ORDER BY {key}, observed_at DESC",
        {"at": at},
    )


def online(settings: Settings, rows: list[dict]) -> dict[str, list]:
    """The serving feature service's online values for entity rows, full feature names."""
    feature_store = store.open_store(settings)
    return feature_store.get_online_features(
        features=feature_store.get_feature_service("recommender_v1_serving"),
        entity_rows=rows,
        full_feature_names=True,
    ).to_dict()
