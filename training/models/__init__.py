"""Model kinds by name. Adding a kind: a module with a ``Recommender`` subclass and a line
below; the training pipeline, MLflow wrapper and service pick it up by its ``kind``."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

from training.models.base import MANIFEST, Recommender

KINDS: dict[str, str] = {
    "popularity": "training.models.popularity:Popularity",
    "item_ctr": "training.models.item_ctr:ItemCtr",
    "ease": "training.models.ease:Ease",
    "two_tower": "training.models.two_tower:TwoTower",
    "seq_transformer": "training.models.seq_transformer:SeqTransformer",
    "two_stage": "training.models.two_stage:TwoStage",
}


# Config fields a kind may declare that the environment sets, never the recipe: where the text
# model and its cache live, the device, progress bars and the global seed.
ENVIRONMENT_FIELDS = ("text_model", "text_cache_dir", "device", "show_progress", "seed")


def environment_config(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """The environment ``values`` (keyed by ENVIRONMENT_FIELDS) that ``kind``'s config has."""
    defaults = model_class(kind).default_config()
    if not dataclasses.is_dataclass(defaults):
        return {}
    names = {field.name for field in dataclasses.fields(defaults)} & set(ENVIRONMENT_FIELDS)
    return {name: value for name, value in values.items() if name in names}


def model_class(kind: str) -> type[Recommender]:
    if kind not in KINDS:
        raise ValueError(f"model kind: unknown {kind!r} (allowed: {', '.join(KINDS)})")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def create(kind: str, **config: Any) -> Recommender:
    """A fresh model of a kind, with its config's defaults overridden by ``config``."""
    cls = model_class(kind)
    defaults = cls.default_config()
    if config and defaults is None:
        raise ValueError(f"{kind}: takes no config, got {sorted(config)}")
    if config:
        unknown = set(config) - set(vars(defaults))
        if unknown:
            raise ValueError(
                f"{kind}: unknown config fields {sorted(unknown)} "
                f"(allowed: {sorted(vars(defaults))})"
            )
        # replace() runs the config's own checks (__post_init__) on the new values.
        defaults = dataclasses.replace(defaults, **config)
    return cls(defaults)


def load_model(path: Path | str) -> Recommender:
    """Load a saved model folder of any kind."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{path}: not a saved model (no {MANIFEST})")
    kind = json.loads(manifest.read_text())["kind"]
    return model_class(kind).load(path)
