"""Names and TTLs shared by the declarations: each said once."""

from datetime import timedelta

OWNER = "ml-platform@recloop"
TAGS = {"team": "recloop", "pipeline": "recloop_features"}

# A features row holds until the entity's next row (see dbt_project user_features). The TTL
# bounds how far back a point-in-time join (training's get_historical_features) looks for it.
# Feast 0.67's online read checks no TTL (measured), so online a quiet entity keeps its row.
USER_FEATURES_TTL = timedelta(days=90)
ITEM_FEATURES_TTL = timedelta(days=90)
# Fresh activity pushed by the service is useful for a day; the batch features take over.
# The service checks this one itself when it reads (serving/features.py).
USER_ACTIVITY_TTL = timedelta(days=1)

# Feature services are named per model version: a model reads exactly the features it was
# trained with. Bump the version when the set changes.
FEATURE_SET_VERSION = "v1"
