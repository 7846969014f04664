"""Every error path: invalid hyperparameters, parameters, gradients and state dicts raise a
ValueError that names the culprit, and a failed call changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from cprop_ref import SGD, Adam, CProp, CPropSGD
from tests.optimizer_catalogue import BY_NAME, CATALOGUE
from tests.optimizer_matrix import (
    FACTORIES,
    INFOS,
    OPTIMIZER_NAMES,
    assert_unchanged,
    make_grads,
    make_params,
    snapshot,
)

#: Every constructor's error inputs from the optimizer catalogue: (optimizer, hyperparameter, value, message).
CASES = [
    (info.cls, error.hyperparameter, error.value, error.message)
    for info in CATALOGUE
    if not info.wraps
    for error in info.error_inputs
]
IDS = [f"{cls.__name__}-{name}-{value!r}" for cls, name, value, _ in CASES]
WRAPPER = BY_NAME["CProp(SGD)"]


def _minimal_kwargs(cls):
    return dict(next(info for info in CATALOGUE if info.cls is cls).required)


@pytest.mark.parametrize("cls, name, value, message", CASES, ids=IDS)
def test_invalid_hyperparameter_names_itself(cls, name, value, message):
    kwargs = _minimal_kwargs(cls) | {name: value}
    with pytest.raises(ValueError, match=message) as err:
        cls([np.ones(2)], **kwargs)
    assert cls.__name__ in str(err.value)


@pytest.mark.parametrize("cls, name, value, message", CASES[:12], ids=IDS[:12])
def test_invalid_hyperparameter_in_a_group_names_the_group(cls, name, value, message):
    with pytest.raises(ValueError, match=rf"param group 1: invalid {name}"):
        cls([{"params": [np.ones(2)]}, {"params": [np.ones(2)], name: value}], **_minimal_kwargs(cls))


@pytest.mark.parametrize(
    "name, value, message",
    [(e.hyperparameter, e.value, e.message) for e in WRAPPER.error_inputs],
    ids=[f"{e.hyperparameter}-{e.value}" for e in WRAPPER.error_inputs],
)
def test_invalid_wrapper_hyperparameter_names_itself(name, value, message):
    with pytest.raises(ValueError, match=message):
        CProp(WRAPPER.base([np.ones(2)], **WRAPPER.required), **{name: value})


def test_nesterov_needs_momentum_and_no_dampening():
    with pytest.raises(ValueError, match="nesterov=True requires momentum > 0"):
        SGD([np.ones(2)], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="dampening == 0"):
        CPropSGD([np.ones(2)], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)


def test_sgd_needs_a_learning_rate():
    with pytest.raises(TypeError):
        SGD([np.ones(2)])  # lr is required, as in the authors' package
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        SGD([{"params": [np.ones(2)], "learning_rate": 0.1}], lr=0.1)


@pytest.mark.parametrize(
    "params, message",
    [
        ([], "params is empty"),
        (np.ones(3), "not a single array"),
        ([[1.0, 2.0]], "must be numpy.ndarray, got list"),
        ([np.ones(3, dtype=np.int64)], "dtype int64 is not supported"),
        ([np.ones(3, dtype=np.complex128)], "dtype complex128 is not supported"),
        ([{"params": []}], "'params' is empty"),
        ([{"lr": 0.1}], "a dict with a 'params' list"),
    ],
)
def test_invalid_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        SGD(params, lr=0.1)


def test_read_only_and_duplicate_parameters_are_refused():
    frozen = np.ones(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="parameter 0: the array is read-only"):
        Adam([frozen])
    shared = np.ones(3)
    with pytest.raises(ValueError, match="param group 1, parameter 0: this array is already in the optimizer"):
        Adam([{"params": [shared]}, {"params": [shared]}])


def _bad_grads(params):
    """(gradient list, expected message) pairs; the bad entry is always the last parameter, so
    the earlier valid ones would be updated first by a careless implementation."""
    good = [np.ones_like(p) for p in params]
    last = len(params) - 1
    where = rf"parameter {last} \(group 1, index 1\)"
    return [
        (good[:-1], f"grads has {last} entries but the optimizer has {len(params)} parameters"),
        (good + [None], "grads has"),
        (np.ones(3), "grads must be a list"),
        (good[:-1] + [np.ones(params[-1].shape + (1,))], where + ": shape"),
        (good[:-1] + [np.ones(params[-1].shape, dtype=np.float32)], where + ": dtype float32 does not match"),
        (good[:-1] + [params[-1].tolist()], where + ": must be numpy.ndarray or None, got list"),
        (good[:-1] + [np.full(params[-1].shape, np.nan)], where + ": non-finite value"),
    ]


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_bad_gradients_name_the_parameter_and_change_nothing(name, backend):
    params = make_params(np.float64)
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    opt = FACTORIES[name](params if INFOS[name].wraps else groups, "bft", backend)
    rng = np.random.default_rng(0)
    opt.step(make_grads(params, rng))
    before = snapshot(opt)
    for grads, message in _bad_grads(params):
        if INFOS[name].wraps:
            message = message.replace("group 1, index 1", "group 0, index 3")
        with pytest.raises(ValueError, match=message):
            opt.step(grads)
        assert_unchanged(opt, before)


@pytest.mark.parametrize("name", ["sgd", "cprop_sgd", "cprop_adam"])
def test_hyperparameter_made_invalid_between_steps_raises_and_changes_nothing(name, backend):
    params = make_params(np.float32)
    opt = FACTORIES[name](params, "bft", backend)
    opt.step(make_grads(params, np.random.default_rng(1)))
    before = snapshot(opt)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"invalid lr=-1.0"):
        opt.step(make_grads(params, np.random.default_rng(2)))
    opt.param_groups[0]["lr"] = before[1]["param_groups"][0]["lr"]
    assert_unchanged(opt, before)


def test_wrapper_hyperparameter_made_invalid_between_steps_changes_nothing():
    params = make_params(np.float64)
    opt = CProp(Adam(params, lr=0.1))
    opt.step(make_grads(params, np.random.default_rng(1)))
    before = snapshot(opt)
    opt.c = -2.0
    with pytest.raises(ValueError, match="CProp: invalid c=-2.0"):
        opt.step(make_grads(params, np.random.default_rng(2)))
    opt.c = 1.0
    assert_unchanged(opt, before)


def test_wrapper_commits_nothing_when_the_base_optimizer_raises():
    """A base optimizer with its own (stricter) checks: it raises, and CProp's statistics do not
    advance either."""
    params = [np.ones(3)]
    base = Adam(params)
    opt = CProp(base, nonfinite="propagate")  # CProp lets the NaN through, the base refuses it
    opt.step([np.ones(3)])
    before = snapshot(opt)
    with pytest.raises(ValueError, match="non-finite"):
        opt.step([np.array([1.0, np.nan, 1.0])])
    assert_unchanged(opt, before)


def test_wrapper_refuses_objects_that_are_not_optimizers():
    with pytest.raises(ValueError, match="must follow the optimizer protocol"):
        CProp(object())


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_load_state_dict_errors_name_the_problem_and_change_nothing(name, backend):
    params = make_params(np.float64)
    opt = FACTORIES[name](params, "bft", backend)
    opt.step(make_grads(params, np.random.default_rng(3)))
    good = opt.state_dict()
    fresh = FACTORIES[name]([p.copy() for p in params], "bft", backend)
    fresh.step(make_grads(params, np.random.default_rng(4)))
    before = snapshot(fresh)
    inner = good["base"] if "base" in good else good  # the wrapper delegates the base's checks

    def variant(mutate):
        sd = opt.state_dict()
        mutate(sd["base"] if "base" in sd else sd)
        return sd

    cases = [
        (variant(lambda sd: sd.update(optimizer="Lion")), "is for 'Lion'"),
        (variant(lambda sd: sd["param_specs"].pop()), "parameters saved"),
        (variant(lambda sd: sd["param_specs"][2].update(shape=[4])), r"parameter 2 \(group 0, index 2\) was saved as"),
        (variant(lambda sd: sd["param_specs"][2].update(dtype="float32")), "was saved as"),
        (variant(lambda sd: sd["param_groups"][0].update(lr=-3.0)), "invalid lr=-3.0"),
        (variant(lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0]))), "parameter groups saved"),
        (
            variant(
                lambda sd: (
                    sd["state"][3].update(step=-1) if "step" in sd["state"][3] else sd["state"][3].update(bogus=1)
                )
            ),
            "state entr",
        ),
        (variant(lambda sd: _corrupt_first_array(sd["state"][3])), "must be a"),
        ("not a dict", "expected a dict|is for"),
    ]
    assert inner["optimizer"]
    for state_dict, message in cases:
        with pytest.raises(ValueError, match=message):
            fresh.load_state_dict(state_dict)
        assert_unchanged(fresh, before)


def _corrupt_first_array(state):
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            state[key] = value.astype(np.float32)
            return
    state["momentum_buffer"] = np.ones(7)
