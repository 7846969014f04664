"""The versioned golden fixtures: the reference reproduces them bit for bit, the format is
what docs/conformance.md says, and the fixtures catch a wrong port."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cprop_ref.cli import main
from cprop_ref.conformance import ConformanceMismatch, reference_port
from cprop_ref.conformance.golden import FORMAT_NAME, FORMAT_VERSION, LAYOUT, check_fixtures, read_fixtures, recompute

FIXTURES = Path(__file__).parent / "golden" / "conformance"


def test_reference_reproduces_the_versioned_fixtures_bit_for_bit():
    """Every stored array (expected values *and* tolerances) equals, bit for bit and dtype for
    dtype, what the reference computes today from the stored inputs. If this fails after an
    intended change of the reference, regenerate with ``cprop-ref golden --out tests/golden/conformance``
    and say why in the commit."""
    cases = read_fixtures(FIXTURES)
    assert len(cases) == 30
    for case in cases:
        fresh = recompute(case)
        assert set(fresh) == set(case.arrays), case.name
        for key, stored in case.arrays.items():
            assert fresh[key].dtype == stored.dtype, (case.name, key)
            assert np.array_equal(fresh[key], stored, equal_nan=True), (case.name, key)


def test_manifest_documents_the_layout():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    assert (manifest["format"], manifest["version"]) == (FORMAT_NAME, FORMAT_VERSION)
    assert manifest["layout"] == LAYOUT
    for entry in manifest["cases"]:
        with np.load(FIXTURES / entry["file"], allow_pickle=False) as npz:
            keys = set(npz.files)
            for k, tensor in enumerate(entry["tensors"]):
                assert {key.format(k=k) for key in LAYOUT} <= keys
                assert list(npz[f"param{k}_initial"].shape) == tensor["shape"]
                assert npz[f"grad{k}"].shape == (entry["steps"], *tensor["shape"])
                assert str(npz[f"param{k}"].dtype) == tensor["dtype"]


def test_fixtures_cover_every_optimizer_cdf_and_dtype():
    configs = [case.config for case in read_fixtures(FIXTURES)]
    assert {c.name for c in configs} == {"CPropSGD", "CPropAdam", "CProp(SGD)", "CProp(Adam)", "CProp(AdamW)"}
    assert {c.cprop()["cdf"] for c in configs} == {"normal", "bft", "bfo", "logistic"}
    assert {c.dtype for c in configs} == {"float32", "float64", "float16"}


def test_the_fixtures_catch_a_wrong_port():
    """A port whose parameters are off by a relative 16 eps (about 16 ulp) is outside the stored
    bounds somewhere: they allow a few ulp of rounding per step, plus what the scale's bound moves."""

    def nudged(config, params):
        run = reference_port(config, params)
        inner = run.params

        def params_out():
            return [p * (1 + 16 * np.finfo(p.dtype).eps) for p in inner()]

        run.params = params_out
        return run

    with pytest.raises(ConformanceMismatch, match="golden:"):
        check_fixtures(FIXTURES, nudged)


def test_golden_command_writes_a_readable_set(tmp_path, capsys):
    assert main(["golden", "--out", str(tmp_path / "fx")]) == 0
    assert "wrote 31 files" in capsys.readouterr().out
    written = read_fixtures(tmp_path / "fx")
    stored = read_fixtures(FIXTURES)
    assert [c.name for c in written] == [c.name for c in stored]
    for a, b in zip(written, stored):
        for key in b.arrays:
            assert np.array_equal(a.arrays[key], b.arrays[key], equal_nan=True), (a.name, key)


def test_read_fixtures_names_the_bad_file(tmp_path):
    with pytest.raises(ValueError, match="manifest"):
        read_fixtures(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else", "version": 1}')
    with pytest.raises(ValueError, match="something-else"):
        read_fixtures(tmp_path)
