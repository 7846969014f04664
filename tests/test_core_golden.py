"""Replays the committed golden trajectories (tests/golden_core, see tests/golden_core_cases.py)
and demands bit-identical parameters and scales: the reference must not drift silently."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.golden_core_cases import CASES, GOLDEN_DIR, SHAPES, replay, unstack_gradients

MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: f"{c['file']}-{c['optimizer']}-{c['dtype']}")
def test_golden_trajectory_is_reproduced_bit_for_bit(case):
    with np.load(GOLDEN_DIR / case["file"], allow_pickle=False) as npz:
        stored = {key: npz[key] for key in npz.files}
    params = [stored[f"initial_{k}"] for k in range(len(SHAPES))]
    replayed = replay(case, params, unstack_gradients(stored))
    expected = {k: v for k, v in stored.items() if k.startswith(("params_", "scales_"))}
    assert sorted(replayed) == sorted(expected)
    for key, value in expected.items():
        assert replayed[key].dtype == value.dtype, key
        np.testing.assert_array_equal(replayed[key], value, err_msg=f"{case['file']} {key}")


def test_the_manifest_holds_the_catalogues_golden_cases():
    """The committed fixtures are those of the optimizer catalogue's ``golden`` configurations,
    in order: a configuration added or changed there needs ``python -m tests.golden_core_cases``."""
    recorded = [{k: v for k, v in case.items() if k != "file"} for case in MANIFEST["cases"]]
    assert recorded == json.loads(json.dumps(CASES)), "regenerate: python -m tests.golden_core_cases"
