"""Fixtures of the search tests."""

from __future__ import annotations

import pytest

from tests.search.helpers import search_data as _search_data


@pytest.fixture
def search_data(tmp_path, tiny_encoder) -> dict:
    return {**_search_data(tmp_path / "data"), "encoder": tiny_encoder}
