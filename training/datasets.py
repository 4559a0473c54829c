"""The pipeline's training set: point-in-time features from Feast over the interactions mart.

The entity rows are the positive interactions of dbt's ``interactions`` mart (one per user,
item and time); ``get_historical_features`` with the training feature service joins each with
the user and item features as they were at that moment (never later: no leakage). Users and
items with their attributes and text come from the staging models. The result is an
``InteractionData`` whose ``snapshot`` names exactly what was read (feature service, row
counts, time range, a digest of the rows), which every MLflow run logs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd

from recloop.settings import Settings
from training.data import InteractionData, context_from

TRAINING_FEATURE_SERVICE = "recommender_v1_training"


class NoTrainingData(RuntimeError):
    """The feature pipeline has not produced anything to train on yet."""


def _read(settings: Settings, query: str) -> pd.DataFrame:
    from recloop import warehouse

    # The features DAG may be running dbt: wait for it rather than fail the training task.
    return warehouse.read_frame(settings, query, wait_seconds=600)


POSITIVES = (
    "SELECT interaction_id, user_id, item_id, interacted_at, context "
    "FROM {relation} WHERE is_positive ORDER BY interacted_at, interaction_id"
)
# Every impression the service logged, clicked or not: what users were shown.
EXPOSURES = (
    "SELECT user_id, item_id, interacted_at AS shown_at "
    "FROM {relation} WHERE is_impression ORDER BY interacted_at, interaction_id"
)


def _positives(settings: Settings) -> pd.DataFrame:
    """The positive rows of the interactions export that Feast reads (the Parquet file in
    the local profile, the dbt relation in production)."""
    from recloop.features.exports import ExportMissing, location, read_export

    try:
        frame = read_export(settings, "feast_interactions", POSITIVES)
    except ExportMissing as error:
        raise NoTrainingData(
            f"{error}: run the feature pipeline first (`recloop features run` or the "
            "recloop_features DAG)"
        ) from None
    if frame.empty:
        raise NoTrainingData(f"{location(settings, 'feast_interactions')} holds no positive "
                             "interactions yet")  # fmt: skip
    frame["interacted_at"] = pd.to_datetime(frame["interacted_at"], utc=True)
    return frame


def from_feature_store(settings: Settings, *, with_features: bool = True) -> InteractionData:
    """The point-in-time training set the pipeline trains on."""
    import json

    positives = _positives(settings)
    contexts = [json.loads(c) if isinstance(c, str) and c else None for c in positives["context"]]
    interactions = pd.concat(
        [
            positives[["user_id", "item_id", "interacted_at"]],
            context_from(positives["interacted_at"], contexts),
        ],
        axis=1,
    )
    # One positive per user and item (a click and a rating of the same item are one preference).
    interactions = interactions.drop_duplicates(["user_id", "item_id"], keep="first")
    snapshot: dict[str, Any] = {
        "source": "feast",
        "positive_interactions": len(interactions),
        "first_interaction_at": interactions["interacted_at"].min().isoformat(),
        "last_interaction_at": interactions["interacted_at"].max().isoformat(),
        "interactions_digest": hashlib.sha256(
            pd.util.hash_pandas_object(positives["interaction_id"], index=False).values.tobytes()
        ).hexdigest()[:16],
    }
    if with_features:
        features = historical_features(settings, interactions)
        interactions = interactions.merge(
            features, on=["user_id", "item_id", "interacted_at"], how="left"
        )
        snapshot["feature_service"] = TRAINING_FEATURE_SERVICE
        snapshot["feature_columns"] = len(features.columns) - 3
    users = _read(
        settings,
        "SELECT user_id, age, gender, occupation, profile_text "
        "FROM staging.stg_users ORDER BY user_id",
    )
    items = _read(
        settings,
        "SELECT item_id, title, item_text AS text, categories "
        "FROM staging.stg_items ORDER BY item_id",
    )
    items["categories"] = items["categories"].map(list)
    known = interactions["item_id"].isin(items["item_id"])
    interactions = interactions[known].reset_index(drop=True)
    snapshot["interactions_without_item"] = int((~known).sum())
    exposures = _exposures(settings)
    exposures = exposures[exposures["item_id"].isin(items["item_id"])].reset_index(drop=True)
    snapshot["exposures"] = len(exposures)
    return InteractionData(users, items, interactions, name="feature_store", snapshot=snapshot,
                           exposures=exposures if len(exposures) else None)  # fmt: skip


def _exposures(settings: Settings) -> pd.DataFrame:
    """The impressions of the interactions export (none where nothing was served yet)."""
    from recloop.features.exports import read_export

    frame = read_export(settings, "feast_interactions", EXPOSURES)
    frame["shown_at"] = pd.to_datetime(frame["shown_at"], utc=True)
    return frame


def historical_features(settings: Settings, interactions: pd.DataFrame) -> pd.DataFrame:
    """User and item features as of each interaction (Feast's point-in-time join)."""
    from recloop.features.store import open_store

    store = open_store(settings)
    entity_df = interactions[["user_id", "item_id", "interacted_at"]].rename(
        columns={"interacted_at": "event_timestamp"}
    )
    service = store.get_feature_service(TRAINING_FEATURE_SERVICE)
    frame = store.get_historical_features(
        entity_df=entity_df, features=service, full_feature_names=True
    ).to_df()
    frame = frame.rename(columns={"event_timestamp": "interacted_at"})
    frame["interacted_at"] = pd.to_datetime(frame["interacted_at"], utc=True)
    # Feast may return rows in another order and repeat none: align on the keys.
    return frame.drop_duplicates(["user_id", "item_id", "interacted_at"])
