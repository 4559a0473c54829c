"""The gate's "nothing in the future" rule on the marts: per row, so an hour without activity
(an empty batch, whose maximum is NaT) passes, and a row past the interval's end still fails."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from recloop.features.gate import _feature_expectations

END = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _validate(frame: pd.DataFrame) -> bool:
    import great_expectations as gx

    rule = next(
        e for e in _feature_expectations("user_features", END)
        if getattr(e, "column", None) == "observed_at" and getattr(e, "max_value", None)
    )  # fmt: skip
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("marts").add_dataframe_asset("user_features")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": frame}
    )
    return bool(batch.validate(rule).success)


@pytest.mark.parametrize(
    ("stamps", "passes"),
    [([], True), (["2026-01-01T11:00:00Z"], True),
     (["2026-01-01T11:00:00Z", "2026-01-01T13:00:00Z"], False)],
    ids=["empty_batch", "in_the_interval", "past_the_end"],
)  # fmt: skip
def test_observed_at_rule(stamps: list[str], passes: bool) -> None:
    frame = pd.DataFrame({"observed_at": pd.to_datetime(stamps, utc=True)})
    assert _validate(frame) is passes
