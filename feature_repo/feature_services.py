from feast import FeatureService

from feature_repo.constants import FEATURE_SET_VERSION, OWNER, TAGS
from feature_repo.feature_views import item_features, user_features, user_recent_activity

training = FeatureService(
    name=f"recommender_{FEATURE_SET_VERSION}_training",
    features=[user_features, item_features],
    description="Point-in-time features for training sets (batch views only).",
    owner=OWNER,
    tags=TAGS,
)

serving = FeatureService(
    name=f"recommender_{FEATURE_SET_VERSION}_serving",
    features=[user_features, item_features, user_recent_activity],
    description="What the service reads online: the batch views plus pushed fresh activity.",
    owner=OWNER,
    tags=TAGS,
)
