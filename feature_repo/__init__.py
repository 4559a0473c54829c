"""Feast definitions (declarations only), split by kind of object as in feast-workshop.

`feature_store.yaml` is not here: it is rendered per profile from the settings into
`<home>/feast/` by `recloop.features.store`.
"""
