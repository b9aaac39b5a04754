from __future__ import annotations

import dataclasses

from tests.conftest import TINY
from toolchain.core.parity import Tolerance
from toolchain.gate.cache import content_key, load_result, store_result


def test_key_is_stable_and_moves_with_spec_options_and_weights() -> None:
    key = content_key(TINY, options={"formats": []})
    assert key == content_key(TINY, options={"formats": []})
    assert key != content_key(TINY, options={"formats": ["auto"]})
    assert key != content_key(dataclasses.replace(TINY, tolerance=Tolerance(atol=1e-3)), options={"formats": []})
    assert key != content_key(dataclasses.replace(TINY, seed=1), options={"formats": []})  # other weights


def test_store_and_load_round_trip() -> None:
    assert load_result("0" * 64) is None
    assert store_result("1" * 64, {"name": "x", "status": "passed"})
    assert load_result("1" * 64) == {"name": "x", "status": "passed", "key": "1" * 64}
