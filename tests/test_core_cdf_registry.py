"""A CDF that a layer does not know is refused loudly, never computed as another CDF.

The reference's registry (``cprop_ref.cdf.CDFS``) is the one list of CDFs; the Numba kernels
(``cprop_ref.kernels.scale``) and the tolerance policy (``cprop_ref.tolerance``) each carry
their own code per CDF. Here a fake CDF is registered in the reference (a logistic with another
slope, so that it runs there) and each other layer is shown to raise an error that names it,
where before the kernels evaluated the normal's code and the tolerance policy the logistic's.
The steps that add a real CDF are in ``docs/algorithm.md``, "Adding a CDF".
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

import cprop_ref.hyperparams
from cprop_ref import cdf as cdf_module
from cprop_ref import tolerance
from cprop_ref.cdf import CDF_NAMES, CDFS, cdf_function
from cprop_ref.kernels import check_kernel_cdf, dispatch  # noqa: F401  (dispatch: imported with the four real CDFs)
from cprop_ref.kernels.scale import CDF_CODES, CDF_MARKERS, check_kernel_cdfs, half_conformity, scale_in_place
from cprop_ref.optim import CPropAdam
from cprop_ref.scale import CPropStats, conformity_probability, cprop_scale

FAKE = "fake"


def fake_cdf(z: np.ndarray) -> np.ndarray:
    """A logistic CDF of slope 1.3: a valid CDF that no layer but the reference knows."""
    return expit(1.3 * np.asarray(z))


@pytest.fixture
def fake_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake CDF in the reference's registry and in the hyperparameter check."""
    monkeypatch.setitem(CDFS, FAKE, fake_cdf)
    monkeypatch.setattr(cdf_module, "CDF_NAMES", (*CDF_NAMES, FAKE))
    monkeypatch.setattr(cprop_ref.hyperparams, "CDF_NAMES", (*CDF_NAMES, FAKE))


def test_registry_is_the_list_of_names() -> None:
    assert tuple(CDFS) == CDF_NAMES


def test_reference_refuses_an_unregistered_cdf() -> None:
    z = np.linspace(-3.0, 3.0, 7)
    with pytest.raises(ValueError, match="unknown cdf='fake'"):
        cdf_function(FAKE)
    with pytest.raises(ValueError, match="unknown cdf='fake'"):
        conformity_probability(z, FAKE)
    stats = CPropStats(np.array([0.5, -0.25]), np.array([0.5, 0.25]), 2)
    with pytest.raises(ValueError, match="unknown cdf='fake'"):
        cprop_scale(stats, 0.9, 1.0, 1e-8, FAKE)
    with pytest.raises(ValueError, match="cprop_cdf='fake'"):
        CPropAdam([np.zeros(3)], lr=0.1, cprop_cdf=FAKE)


@pytest.mark.usefixtures("fake_registered")
def test_reference_runs_a_registered_cdf() -> None:
    z = np.linspace(-3.0, 3.0, 7)
    np.testing.assert_array_equal(conformity_probability(z, FAKE), fake_cdf(z))
    stats = CPropStats(np.array([0.5, -0.25]), np.array([0.5, 0.25]), 2)
    scale = cprop_scale(stats, 0.9, 1.0, 1e-8, FAKE)
    assert np.all((scale >= 0.0) & (scale <= 1.0))


@pytest.mark.usefixtures("fake_registered")
def test_kernels_refuse_a_cdf_without_kernel_code() -> None:
    # What importing cprop_ref/kernels/scale.py (the first numba step) checks, with the fake
    # CDF registered: it refuses to import.
    with pytest.raises(NotImplementedError, match="'fake'.*cprop_ref/kernels/scale.py"):
        check_kernel_cdfs(cdf_module.CDF_NAMES)
    check_kernel_cdfs(CDF_NAMES)  # the four real ones pass
    # The check a constructor can make without importing Numba.
    with pytest.raises(ValueError, match="invalid cprop_cdf='fake' for backend='numba'"):
        check_kernel_cdf("cprop_cdf", FAKE)
    assert [check_kernel_cdf("cdf", name) for name in CDF_NAMES] == list(CDF_NAMES)
    with pytest.raises(ValueError, match="cdf='fake' has no Numba kernel"):
        CDF_CODES[FAKE]
    # The element functions, given a code or a marker one past the last CDF: an error, where
    # they used to return the normal's |F - 1/2|.
    unknown_code = len(CDF_MARKERS)
    buffer = np.array([0.5, -1.0, 2.0])
    with pytest.raises(ValueError, match="CDF code without kernel code"):
        scale_in_place(buffer, buffer.size, unknown_code, 2.0, 1.0)
    with pytest.raises(ValueError, match="CDF marker without kernel code"):
        half_conformity((0,) * unknown_code, 0.5)


@pytest.mark.usefixtures("fake_registered")
def test_numba_step_with_an_unknown_cdf_raises_and_changes_nothing() -> None:
    param = np.linspace(-1.0, 1.0, 5)
    before = param.copy()
    numpy_step = CPropAdam([param.copy()], lr=0.1, cprop_cdf=FAKE, backend="numpy")
    numpy_step.step([np.ones(5)])  # the reference runs it
    with pytest.raises(ValueError, match="invalid cprop_cdf='fake' for backend='numba'"):
        CPropAdam([param], lr=0.1, cprop_cdf=FAKE, backend="numba")  # refused at construction
    optimizer = CPropAdam([param], lr=0.1, cprop_cdf=FAKE, backend="numpy")
    optimizer.backend = "numba"  # and at the step, if the backend changes afterwards
    with pytest.raises(ValueError, match="cdf='fake' has no Numba kernel"):
        optimizer.step([np.ones(5)])
    np.testing.assert_array_equal(param, before)


@pytest.mark.usefixtures("fake_registered")
def test_tolerance_policy_refuses_a_cdf_without_density() -> None:
    z = np.array([0.0, 1.0, 5.0])
    with pytest.raises(ValueError, match="cdf_density: unknown cdf='fake'"):
        tolerance.cdf_density(z, FAKE)
    with pytest.raises(ValueError, match="cdf_tail: unknown cdf='fake'"):
        tolerance.cdf_tail(z, FAKE)
    m, v = np.array([0.5, -0.25]), np.array([0.5, 0.25])
    with pytest.raises(ValueError, match="unknown cdf='fake'"):
        tolerance.scale_tolerance(
            m, v, 2, beta=0.9, c=1.0, eps=1e-8, cdf=FAKE, m_bound=np.zeros(2), v_bound=np.zeros(2), u=2.0**-53
        )
