"""Parsing mutation requests from their wire params: what is accepted, what is refused."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ipamd.core.requests import (
    DEFAULT_ATTACHMENT,
    AllocRequest,
    Attachment,
    ReleaseRequest,
)
from ipamd.errors import InvalidRequest


@pytest.mark.parametrize("options", [None, {}, []])
def test_alloc_without_options_uses_the_defaults(options: Any) -> None:
    request = AllocRequest.from_wire({"container_id": "c", "networks": {"n": options}})
    assert request.networks == {"n": DEFAULT_ATTACHMENT}
    assert Attachment("", (), None) == DEFAULT_ATTACHMENT


def test_alloc_options_are_parsed() -> None:
    request = AllocRequest.from_wire(
        {
            "container_id": "c",
            "networks": {
                "n": {"ifname": "eth0", "static_ips": ["10.0.0.5"], "attributes": {"a": "b"}}
            },
        }
    )
    assert request.networks["n"] == Attachment(
        "eth0", (ipaddress.ip_address("10.0.0.5"),), {"a": "b"}
    )


@pytest.mark.parametrize("options", [0, "", False, "x", [1]])
def test_alloc_options_that_are_not_a_map_are_refused(options: Any) -> None:
    with pytest.raises(InvalidRequest, match="options of network n must be a map"):
        AllocRequest.from_wire({"container_id": "c", "networks": {"n": options}})


@pytest.mark.parametrize("parse", [AllocRequest.from_wire, ReleaseRequest.from_wire])
def test_unknown_keys_are_named(parse: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"unknown network option key\(s\) \['bogus'\]"):
        parse({"container_id": "c", "networks": {"n": {"ifname": "e", "bogus": 1}}})
    with pytest.raises(InvalidRequest, match=r"key\(s\) \['1', 'zz'\]"):
        parse({"container_id": "c", "networks": {"n": {}}, "zz": 0, 1: 2})


@pytest.mark.parametrize("options", [None, {}, []])
def test_release_without_options_means_every_ifname(options: Any) -> None:
    request = ReleaseRequest.from_wire({"container_id": "c", "networks": {"n": options}})
    assert request.networks == {"n": None}


def test_release_options_that_are_not_a_map_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="options of network n must be a map, got integer 0"):
        ReleaseRequest.from_wire({"container_id": "c", "networks": {"n": 0}})
