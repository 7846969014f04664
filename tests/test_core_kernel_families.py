"""A kernel family or a CDF that a layer does not know is refused when the object is built.

An optimizer names its family of fused kernels in ``kernel_family``, a key of
``cprop_ref.kernels.family.KERNEL_FAMILIES``; the conformance harness maps each optimizer to
the base update it scales (``conformance.config.FAMILIES``) and bounds only the families it
knows (``conformance.bounds.BOUNDED_FAMILIES``). Here a fake family and a fake CDF are
declared and each layer is shown to refuse them at construction, naming them, where before an
unknown family ran the SGD kernels (or was counted as Adam) and an unknown CDF failed at the
first step only. A family registered with a real declaration runs through the generic
dispatcher: the steps of ``docs/design/kernels.md``, "Adding a family".
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from scipy.special import expit

import cprop_ref.hyperparams
from cprop_ref import cdf as cdf_module
from cprop_ref.cdf import CDF_NAMES, CDFS
from cprop_ref.conformance import config as config_module
from cprop_ref.conformance.bounds import RunBounds
from cprop_ref.conformance.config import PortConfig
from cprop_ref.kernels import family as family_module
from cprop_ref.kernels.family import KERNEL_FAMILIES, KernelFamily, check_kernel_family, kernel_family
from cprop_ref.optim import SGD, Adam, AdamW, CProp, CPropAdam, CPropSGD

FAKE = "fake"


class FakeFamilySGD(SGD):
    """SGD whose class names a kernel family that no module declares."""

    kernel_family: ClassVar[str | None] = FAKE


def test_an_optimizer_naming_an_unknown_family_is_refused_at_construction() -> None:
    for backend in ("numba", "numpy"):
        with pytest.raises(ValueError, match="FakeFamilySGD: unknown kernel_family='fake'"):
            FakeFamilySGD([np.zeros(3)], lr=0.1, backend=backend)
    with pytest.raises(ValueError, match="unknown kernel_family='fake'"):
        check_kernel_family("kernel_family", FAKE)
    with pytest.raises(ValueError, match="unknown kernel_family='fake'"):
        kernel_family(FAKE)
    assert check_kernel_family("SGD", None) is None  # no kernels: the NumPy path


def test_an_adam_subclass_must_name_the_family_of_its_weight_decay() -> None:
    """Adam's and AdamW's kernels differ in the decay alone: a subclass that switches the decay
    and keeps the other's family is refused when the class is defined."""
    with pytest.raises(TypeError, match="decoupled_weight_decay=True needs kernel_family='adamw'"):

        class DecoupledAdam(Adam):
            decoupled_weight_decay: ClassVar[bool] = True

    class DecoupledAdamW(Adam):
        decoupled_weight_decay: ClassVar[bool] = True
        kernel_family: ClassVar[str | None] = "adamw"

    class NumpyOnly(AdamW):
        decoupled_weight_decay: ClassVar[bool] = False
        kernel_family: ClassVar[str | None] = None

    assert DecoupledAdamW.kernel_family == AdamW.kernel_family and NumpyOnly.kernel_family is None


def test_every_registered_family_is_declared() -> None:
    for name in KERNEL_FAMILIES:
        declared = kernel_family(name)
        assert isinstance(declared, KernelFamily) and declared.name == name
        assert callable(declared.kernels.serial) and callable(declared.kernels.parallel)


def test_a_registry_entry_that_is_no_declaration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KERNEL_FAMILIES, FAKE, (".sgd", "FIELDS"))
    monkeypatch.setattr(family_module, "_LOADED", {})
    with pytest.raises(TypeError, match="FIELDS is a tuple, not a KernelFamily"):
        kernel_family(FAKE)


def test_a_registered_family_runs_through_the_generic_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """A family declared as CProp-SGD's under another name: the dispatcher knows nothing of it
    but its declaration, and the steps are CProp-SGD's to the bit."""

    class RenamedCPropSGD(CPropSGD):
        kernel_family: ClassVar[str | None] = "renamed_cprop_sgd"

    monkeypatch.setitem(KERNEL_FAMILIES, "renamed_cprop_sgd", (".sgd", "CPROP_SGD"))
    monkeypatch.setattr(family_module, "_LOADED", {})
    rng = np.random.default_rng(7)
    start = rng.standard_normal(5).astype(np.float32)
    params = {name: [start.copy()] for name in ("renamed", "original")}
    renamed = RenamedCPropSGD(params["renamed"], lr=0.1, momentum=0.9, cprop_cdf="bfo")
    original = CPropSGD(params["original"], lr=0.1, momentum=0.9, cprop_cdf="bfo")
    for _ in range(3):
        g = rng.standard_normal(5).astype(np.float32)
        renamed.step([g])
        original.step([g])
    np.testing.assert_array_equal(params["renamed"][0], params["original"][0])
    assert renamed.state[0]["step"] == original.state[0]["step"] == 3
    np.testing.assert_array_equal(renamed.state[0]["cprop_v"], original.state[0]["cprop_v"])


def test_flag_and_scalar_rows_are_named_columns() -> None:
    """Each family's rows are NamedTuples whose fields are the kernels' column constants."""
    from cprop_ref.kernels import adam, sgd, wrapper
    from cprop_ref.kernels.flat import FlatState

    for module, flags in ((adam, adam.AdamFlags), (sgd, sgd.SgdFlags), (wrapper, wrapper.WrapperFlags)):
        assert module.FLAG_COUNT == len(flags._fields)
        for column, field in enumerate(flags._fields):
            assert getattr(module, field.upper()) == column, (module.__name__, field)
    assert adam.CPROP_BASE == len(adam.AdamScalars._fields)
    assert sgd.CPROP_BASE == len(sgd.SgdScalars._fields)
    group: dict[str, Any] = {
        "lr": 0.1,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
        "cprop_beta": 0.999,
        "cprop_c": 1.0,
        "cprop_eps": 1e-8,
        "cprop_cdf": "logistic",
    }
    param = np.zeros(4, np.float32)
    arena = FlatState(adam.FIELDS, [(0, param)], param.dtype)
    step = adam.CPROP_ADAM.tensor_step(arena, 0, {}, group, {})
    assert isinstance(step.flags, adam.AdamFlags) and step.flags.cprop and not step.flags.private_v
    assert step.scalars[adam.NEG_STEP_SIZE] == -0.1 / (1.0 - 0.9)
    assert step.state["step"] == 1 and step.state["exp_avg"].base is arena.arena


@pytest.fixture
def fake_cdf_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake CDF (a logistic of slope 1.3) in the reference's registry and the hyperparameter check."""
    monkeypatch.setitem(CDFS, FAKE, lambda z: expit(1.3 * np.asarray(z)))
    monkeypatch.setattr(cdf_module, "CDF_NAMES", (*CDF_NAMES, FAKE))
    monkeypatch.setattr(cprop_ref.hyperparams, "CDF_NAMES", (*CDF_NAMES, FAKE))


@pytest.mark.usefixtures("fake_cdf_registered")
def test_a_cdf_without_kernel_code_is_refused_at_construction_with_the_kernels() -> None:
    for build in (
        lambda backend: CPropAdam([np.zeros(3)], lr=0.1, cprop_cdf=FAKE, backend=backend),
        lambda backend: CPropSGD([np.zeros(3)], lr=0.1, cprop_cdf=FAKE, backend=backend),
    ):
        with pytest.raises(ValueError, match="param group 0: invalid cprop_cdf='fake' for backend='numba'"):
            build("numba")
        build("numpy")  # the reference runs it
    with pytest.raises(ValueError, match="CProp: invalid cdf='fake' for backend='numba'"):
        CProp(SGD([np.zeros(3)], lr=0.1), cdf=FAKE, backend="numba")
    CProp(SGD([np.zeros(3)], lr=0.1), cdf=FAKE, backend="numpy")
    optimizer = CPropSGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="param group 1: invalid cprop_cdf='fake'"):
        optimizer.add_param_group({"params": [np.zeros(2)], "cprop_cdf": FAKE})
    assert len(optimizer.param_groups) == 1 and len(optimizer.state) == 1  # nothing changed


def test_the_harness_refuses_a_configuration_of_an_unknown_family(monkeypatch: pytest.MonkeyPatch) -> None:
    hyperparams = {"lr": 0.1, "cprop_beta": 0.9, "cprop_c": 1.0, "cprop_eps": 1e-8, "cprop_cdf": "bft"}
    wrapper_hp = {"beta": 0.9, "c": 1.0, "eps": 1e-8, "cdf": "bft"}
    # An optimizer and a base the harness lists, but whose family no one declared.
    monkeypatch.setattr(config_module, "OPTIMIZERS", (*config_module.OPTIMIZERS, "CPropFake"))
    monkeypatch.setattr(config_module, "BASE_OPTIMIZERS", (*config_module.BASE_OPTIMIZERS, "Fake"))
    with pytest.raises(ValueError, match="'CPropFake' has no family"):
        PortConfig("CPropFake", hyperparams)
    with pytest.raises(ValueError, match="'Fake' has no family"):
        PortConfig("CProp", wrapper_hp, base="Fake", base_hyperparams={"lr": 0.1})
    # A family the configuration knows but the bounds do not: refused when the bounds are built.
    monkeypatch.setitem(config_module.FAMILIES, "Fake", FAKE)
    config = PortConfig("CProp", wrapper_hp, base="Fake", base_hyperparams={"lr": 0.1})
    assert config.family == FAKE
    with pytest.raises(ValueError, match="no error bounds for the family 'fake' of CProp\\(Fake\\)"):
        RunBounds(config, [(3,)])
    assert PortConfig("CPropSGD", hyperparams).family == "sgd"
    assert PortConfig("CProp", wrapper_hp, base="AdamW", base_hyperparams={"lr": 0.1}).family == "adam"


def test_the_torch_fused_variant_refuses_a_cdf_it_has_no_numbers_for() -> None:
    pytest.importorskip("torch")
    from cprop_ref.torch.fused import LOGISTIC_FAMILY, cprop_numbers

    with pytest.raises(ValueError, match="invalid cdf='fake' for the fused variant"):
        cprop_numbers(0.9, 1.0, 1e-8, FAKE, 2)
    for name in ("normal", *LOGISTIC_FAMILY):
        cprop_numbers(0.9, 1.0, 1e-8, name, 2)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_steps_as_the_original(how: str) -> None:
    """The launch plan is not copied with the optimizer: the copy's state dicts hold copies of
    the arena's views, so a copied steady state (one small tensor) would step an arena that no
    state dict reads, and the copy would stand still."""
    import copy
    import pickle

    param = np.array([1.0, -2.0], np.float32)
    original = CPropAdam([param], lr=0.01)
    g = [np.array([0.3, -0.1], np.float32)]
    for _ in range(3):
        original.step(g)
    assert original.kernel_plan.steady is not None
    twin = copy.deepcopy(original) if how == "deepcopy" else pickle.loads(pickle.dumps(original))
    for _ in range(3):
        original.step(g)
        twin.step(g)
    np.testing.assert_array_equal(twin.param_groups[0]["params"][0], param)
    for name in ("exp_avg", "exp_avg_sq", "cprop_m"):
        np.testing.assert_array_equal(twin.state[0][name], original.state[0][name])
    assert twin.state[0]["step"] == original.state[0]["step"] == 6
