"""Where Feast reads features: the dbt marts' Parquet exports, and a push source for the
service's fresh clicks. Files are named by bare file name: `recloop.features.store` resolves
them into the settings' features folder (`<home>/features`), so no path is written here."""

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

from feature_repo.constants import OWNER, TAGS

user_features_source = FileSource(
    name="user_features_source",
    path="feast_user_features.parquet",
    file_format=ParquetFormat(),
    timestamp_field="observed_at",
    description="dbt mart user_features (point-in-time, one row per change point).",
    owner=OWNER,
    tags=TAGS,
)

item_features_source = FileSource(
    name="item_features_source",
    path="feast_item_features.parquet",
    file_format=ParquetFormat(),
    timestamp_field="observed_at",
    description="dbt mart item_features (point-in-time, one row per change point).",
    owner=OWNER,
    tags=TAGS,
)

user_activity_batch_source = FileSource(
    name="user_activity_batch_source",
    path="user_activity.parquet",
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    description="Offline copy of pushed user activity (written when pushes go offline too).",
    owner=OWNER,
    tags=TAGS,
)

user_activity_push = PushSource(
    name="user_activity_push",
    batch_source=user_activity_batch_source,
    description="Fresh clicks pushed by the serving process, seconds after they happen.",
    owner=OWNER,
    tags=TAGS,
)
