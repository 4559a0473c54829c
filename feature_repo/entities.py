from feast import Entity, ValueType

from feature_repo.constants import OWNER, TAGS

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A user of the recommender (the contract's user_id).",
    owner=OWNER,
    tags=TAGS,
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalogue item (the contract's item_id).",
    owner=OWNER,
    tags=TAGS,
)
