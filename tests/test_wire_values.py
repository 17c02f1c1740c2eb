"""The one reading of a map a peer sent, shared by the framing and the request parsers."""

from __future__ import annotations

import pytest

from ipamd.errors import InvalidRequest
from ipamd.wire.values import as_map, as_optional_map, describe


def test_a_map_or_an_empty_array_is_a_map() -> None:
    assert as_map([], "attributes") == {}
    assert as_map({"a": "b"}, "attributes") == {"a": "b"}
    with pytest.raises(InvalidRequest, match="attributes must be a map, got an array of 1 items"):
        as_map(["x"], "attributes")
    with pytest.raises(InvalidRequest, match="attributes keys must be strings, got integer 1"):
        as_map({1: "x"}, "attributes")


def test_nil_is_a_map_only_where_it_stands_for_an_argument_left_out() -> None:
    with pytest.raises(InvalidRequest, match="params must be a map, got nil"):
        as_map(None, "params")
    assert as_optional_map(None, "options") == {}
    assert as_optional_map([], "options") == {}
    with pytest.raises(InvalidRequest, match="options must be a map, got integer 0"):
        as_optional_map(0, "options")


def test_descriptions_are_bounded() -> None:
    assert describe("x" * 1000) == f"string {'x' * 40!r}..."
    assert describe(b"\0" * 1000) == "bin of 1000 bytes"
    assert [describe(v) for v in (None, True, 7, 1.5)] == ["nil", "true", "integer 7", "float 1.5"]
