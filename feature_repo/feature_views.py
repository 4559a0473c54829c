from feast import FeatureView, Field
from feast.types import Array, Float64, Int64, String, UnixTimestamp

from feature_repo.constants import (
    ITEM_FEATURES_TTL,
    OWNER,
    TAGS,
    USER_ACTIVITY_TTL,
    USER_FEATURES_TTL,
)
from feature_repo.data_sources import (
    item_features_source,
    user_activity_push,
    user_features_source,
)
from feature_repo.entities import item, user

user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=USER_FEATURES_TTL,
    schema=[
        Field(name="interactions_last_1_hour", dtype=Int64),
        Field(name="interactions_last_24_hours", dtype=Int64),
        Field(name="interactions_last_7_days", dtype=Int64),
        Field(name="interactions_all_time", dtype=Int64),
        Field(name="impressions_all_time", dtype=Int64),
        Field(name="clicks_all_time", dtype=Int64),
        Field(name="click_through_rate", dtype=Float64),
        Field(name="rating_count", dtype=Int64),
        Field(name="rating_mean", dtype=Float64),
        Field(name="last_interaction_at", dtype=UnixTimestamp),
        Field(name="days_since_last_interaction", dtype=Float64),
        Field(name="top_categories", dtype=Array(String)),
        Field(name="recent_item_ids", dtype=Array(String)),
    ],
    source=user_features_source,
    online=True,
    description="Windowed activity, smoothed CTR, ratings, top categories, recent items.",
    owner=OWNER,
    tags=TAGS,
)

item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=ITEM_FEATURES_TTL,
    schema=[
        Field(name="popularity_last_1_hour", dtype=Int64),
        Field(name="popularity_last_24_hours", dtype=Int64),
        Field(name="popularity_last_7_days", dtype=Int64),
        Field(name="popularity_all_time", dtype=Int64),
        Field(name="impressions_all_time", dtype=Int64),
        Field(name="clicks_all_time", dtype=Int64),
        Field(name="click_through_rate", dtype=Float64),
        Field(name="rating_count", dtype=Int64),
        Field(name="rating_mean", dtype=Float64),
        Field(name="age_in_days", dtype=Float64),
    ],
    source=item_features_source,
    online=True,
    description="Popularity over windows, smoothed CTR, ratings, age.",
    owner=OWNER,
    tags=TAGS,
)

# Pushed by the service on /feedback. Feast's StreamFeatureView needs a stream engine (Kafka,
# Spark); a FeatureView over a PushSource is Feast's idiom for features pushed from a process.
user_recent_activity = FeatureView(
    name="user_recent_activity",
    entities=[user],
    ttl=USER_ACTIVITY_TTL,
    schema=[
        Field(name="recent_click_item_ids", dtype=Array(String)),
        Field(name="last_click_at", dtype=UnixTimestamp),
    ],
    source=user_activity_push,
    online=True,
    description="The user's latest clicks, pushed seconds after they happen.",
    owner=OWNER,
    tags=TAGS,
)
