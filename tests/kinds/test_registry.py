"""The registry: every kind is named, detectable, configurable, and has its own test file."""

from __future__ import annotations

import pathlib

import pytest

from purgeproxy.config import ConfigError, parse_config
from purgeproxy.servers.registry import KIND_NAMES, REGISTRY, detect, kind_named


def test_every_kind_has_its_own_test_file() -> None:
    here = pathlib.Path(__file__).parent
    assert {kind.name for kind in REGISTRY} == set(KIND_NAMES)
    missing = [name for name in KIND_NAMES if not (here / f"test_kind_{name}.py").is_file()]
    assert missing == []


@pytest.mark.parametrize("name", KIND_NAMES)
def test_every_kind_can_be_chosen_in_config(name: str) -> None:
    config = parse_config({"upstream": {"url": "http://upstream.test/fhir", "kind": name}})
    assert kind_named(config.upstream.kind).name == name


def test_an_unknown_kind_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="upstream.kind") as error:
        parse_config({"upstream": {"url": "http://upstream.test/fhir", "kind": "oracle"}})
    assert all(name in str(error.value) for name in KIND_NAMES)


def test_the_generic_kind_is_tried_last() -> None:
    assert REGISTRY[-1].name == "generic"
    assert detect({"resourceType": "CapabilityStatement"}).name == "generic"
