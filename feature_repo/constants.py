"""Names and TTLs shared by the declarations: each said once."""

from datetime import timedelta

OWNER = "ml-platform@recloop"
TAGS = {"team": "recloop", "pipeline": "recloop_features"}

# A features row holds until the entity's next row (see dbt_project user_features), so the TTL
# only bounds how stale an entity that went quiet may get before Feast returns nulls.
USER_FEATURES_TTL = timedelta(days=90)
ITEM_FEATURES_TTL = timedelta(days=90)
# Fresh activity pushed by the service is useful for a day; the batch features take over.
USER_ACTIVITY_TTL = timedelta(days=1)

# Feature services are named per model version: a model reads exactly the features it was
# trained with. Bump the version when the set changes.
FEATURE_SET_VERSION = "v1"
