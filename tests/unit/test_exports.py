"""Reading a local export while the feature pipeline replaces it (recloop.features.exports)."""

from __future__ import annotations

import os

import duckdb
import pandas as pd
import pytest

from recloop.features import exports
from recloop.settings import Settings


def _settings(tmp_path) -> Settings:
    settings = Settings(home=tmp_path)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    return settings


def test_a_read_that_fails_while_the_file_is_replaced_is_repeated(tmp_path, monkeypatch) -> None:
    settings = _settings(tmp_path)
    where = exports.location(settings, "feast_items")
    with open(where, "wb") as handle:  # what a reader may meet mid-rename: not Parquet
        handle.write(b"PAR1 not a parquet file")
    fresh = tmp_path / "fresh.parquet"
    pd.DataFrame({"item_id": ["i1", "i2"]}).to_parquet(fresh)
    identity, calls = exports._identity, []

    def replaced_after_the_first_read(path):
        calls.append(path)
        if len(calls) == 2:  # the failed read's second look: dbt's rename lands now
            os.replace(fresh, where)
        return identity(path)

    monkeypatch.setattr(exports, "_identity", replaced_after_the_first_read)
    frame = exports.read_export(settings, "feast_items", "select * from {relation}")
    assert frame["item_id"].tolist() == ["i1", "i2"]
    assert len(calls) == 3  # read, failed and found the file changed, read again


def test_a_broken_file_that_does_not_change_is_an_error(tmp_path) -> None:
    settings = _settings(tmp_path)
    with open(exports.location(settings, "feast_items"), "wb") as handle:
        handle.write(b"PAR1 not a parquet file")
    with pytest.raises(duckdb.Error):
        exports.read_export(settings, "feast_items", "select * from {relation}")


def test_a_missing_export_says_where_it_was_looked_for(tmp_path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(exports.ExportMissing, match=r"feast_items\.parquet does not exist"):
        exports.read_export(settings, "feast_items", "select * from {relation}")
