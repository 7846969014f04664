"""Any interleaving of steps (with skipped parameters), saves and
loads, refused calls and hyperparameter changes leaves the optimizer exactly where an
uninterrupted run would be.

The hypothesis state machine drives two optimizers of the same kind over their own
copies of the same parameters:

- the *subject* (``nonfinite="skip"``) gets everything: steps whose gradients may hold
  NaN / inf for some parameters, checkpoint saves followed by a load into a freshly built
  optimizer (whose hyperparameters are scrambled first), ``state_dict`` round trips,
  refused loads and refused steps, and hyperparameter changes;
- the *model* (``nonfinite="raise"``) only steps, with ``None`` where the subject's
  gradient was non-finite, and gets the same hyperparameter changes.

After every action the parameters and the state dicts (except the recorded policy) must
be identical, byte for byte.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cprop_ref import CDF_NAMES, CheckpointError
from tests.reliability_support import BACKENDS, OPTIMIZERS, PARAM_SHAPES, assert_identical, build, snapshot

DECAYS = st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999])
#: Valid values of every hyperparameter the machine changes (for the group of ``group``).
GROUP_VALUES = {
    "lr": st.sampled_from([0.0, 1e-3, 0.05]) | st.floats(1e-4, 0.5),
    "dampening": st.sampled_from([0.0, 0.1]),
    "weight_decay": st.sampled_from([0.0, 0.01]),
    "betas": st.tuples(DECAYS, DECAYS),
    "eps": st.sampled_from([0.0, 1e-8, 1e-3]),
    "amsgrad": st.booleans(),
    "cprop_beta": DECAYS,
    "cprop_c": st.sampled_from([0.0, 1.0, 3.0]),
    "cprop_eps": st.sampled_from([0.0, 1e-8]),
    "cprop_cdf": st.sampled_from(CDF_NAMES),
}
WRAPPER_VALUES = {
    "beta": DECAYS,
    "c": st.sampled_from([0.0, 1.0, 3.0]),
    "eps": st.sampled_from([0.0, 1e-8]),
    "cdf": st.sampled_from(CDF_NAMES),
}
GRADIENT_KINDS = st.sampled_from(["finite", "finite", "finite", "none", "nonfinite"])


def _without_policy(tree: dict) -> dict:
    tree = dict(tree)
    tree.pop("nonfinite", None)
    if "base" in tree:
        tree["base"] = _without_policy(tree["base"])
    return tree


def _groups_of(optimizer) -> list[dict]:
    return getattr(optimizer, "base_optimizer", optimizer).param_groups


class OptimizerVersusUninterruptedRun(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="cprop-stateful-"))
        self.saves = 0

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @initialize(kind=st.sampled_from(list(OPTIMIZERS)), dtype=st.sampled_from([np.float16, np.float32, np.float64]),
                backend=st.sampled_from(BACKENDS))  # fmt: skip
    def build_pair(self, kind, dtype, backend):
        self.kind, self.dtype, self.backend = kind, dtype, backend
        self.subject, self.subject_params = build(kind, dtype, nonfinite="skip", backend=backend)
        self.model, self.model_params = build(kind, dtype, nonfinite="raise", backend=backend)

    # -- what both get ----------------------------------------------------------------

    @rule(seed=st.integers(0, 2**32 - 1), kinds=st.lists(GRADIENT_KINDS, min_size=3, max_size=3),
          bad=st.sampled_from([np.nan, np.inf, -np.inf]))  # fmt: skip
    def step(self, seed, kinds, bad):
        rng = np.random.default_rng(seed)
        subject_grads, model_grads = [], []
        for shape, how in zip(PARAM_SHAPES, kinds):
            g = np.asarray(0.3 + rng.standard_normal(shape)).astype(self.dtype)
            if how == "none":
                subject_grads.append(None)
                model_grads.append(None)
            elif how == "nonfinite":
                poisoned = g.copy()
                poisoned.reshape(-1)[rng.integers(g.size)] = bad
                subject_grads.append(poisoned)
                model_grads.append(None)
            else:
                subject_grads.append(g)
                model_grads.append(g.copy())
        self.subject.step(subject_grads)
        self.model.step(model_grads)

    @rule(data=st.data())
    def change_group_hyperparameter(self, data):
        groups = _groups_of(self.subject)
        index = data.draw(st.integers(0, len(groups) - 1), label="group")
        names = [name for name in GROUP_VALUES if name in groups[index]]
        if groups[index].get("nesterov"):
            names.remove("dampening")  # nesterov needs dampening == 0 (and momentum > 0)
        name = data.draw(st.sampled_from(names), label="hyperparameter")
        value = data.draw(GROUP_VALUES[name], label="value")
        groups[index][name] = value
        _groups_of(self.model)[index][name] = value

    @precondition(lambda self: hasattr(self.subject, "base_optimizer"))
    @rule(data=st.data())
    def change_wrapper_hyperparameter(self, data):
        name = data.draw(st.sampled_from(sorted(WRAPPER_VALUES)), label="wrapper hyperparameter")
        value = data.draw(WRAPPER_VALUES[name], label="value")
        setattr(self.subject, name, value)
        setattr(self.model, name, value)

    # -- what only the subject gets ---------------------------------------------------

    @rule(scramble=st.booleans())
    def save_and_load_into_a_new_optimizer(self, scramble):
        """A restart: save, build a new optimizer over the same arrays, load."""
        path = self.folder / f"c{self.saves % 2}.npz"
        self.saves += 1
        self.subject.save(path)
        fresh = OPTIMIZERS[self.kind](self.subject_params, "raise", self.backend)
        if scramble:
            for group in _groups_of(fresh):
                group["lr"] = 0.123  # whatever the new optimizer starts with is overwritten
            if hasattr(fresh, "base_optimizer"):
                fresh.c = 0.5
        fresh.load(path)
        self.subject = fresh

    @rule()
    def state_dict_round_trip(self):
        self.subject.load_state_dict(self.subject.state_dict())

    @rule(which=st.sampled_from(["other optimizer", "truncated file", "bad lr"]))
    def refused_load(self, which):
        path = self.folder / "refused.npz"
        if which == "other optimizer":
            other = "Adam" if "SGD" in self.kind else "SGD"
            build(other, self.dtype)[0].save(path)
        else:
            self.subject.save(path)
            if which == "truncated file":
                path.write_bytes(path.read_bytes()[:-100])
            else:
                state = self.subject.state_dict()
                _groups_of_tree(state)[0]["lr"] = -1.0
                with pytest.raises(ValueError, match="invalid lr=-1.0"):
                    self.subject.load_state_dict(state)
                return
        with pytest.raises((ValueError, CheckpointError)):
            self.subject.load(path)

    @rule(which=st.sampled_from(["wrong shape", "wrong dtype", "too few", "invalid lr"]))
    def refused_step(self, which):
        grads = [np.asarray(np.ones(shape)).astype(self.dtype) for shape in PARAM_SHAPES]
        if which == "wrong shape":
            grads[1] = np.ones(4, self.dtype)
        elif which == "wrong dtype":
            grads[0] = grads[0].astype(np.float64 if self.dtype != np.float64 else np.float32)
        elif which == "too few":
            grads = grads[:2]
        else:
            group = _groups_of(self.subject)[-1]
            saved_lr, group["lr"] = group["lr"], -1.0
            with pytest.raises(ValueError, match="lr"):
                self.subject.step(grads)
            group["lr"] = saved_lr
            return
        with pytest.raises(ValueError):
            self.subject.step(grads)

    @precondition(lambda self: hasattr(self.subject, "base_optimizer"))
    @rule(name=st.sampled_from(["beta", "c", "eps", "cdf"]))
    def refused_step_with_an_invalid_wrapper_hyperparameter(self, name):
        bad = {"beta": 1.0, "c": -1.0, "eps": float("nan"), "cdf": "cauchy"}[name]
        saved = getattr(self.subject, name)
        setattr(self.subject, name, bad)
        with pytest.raises(ValueError, match=f"invalid {name}="):
            self.subject.step([np.asarray(np.ones(shape)).astype(self.dtype) for shape in PARAM_SHAPES])
        setattr(self.subject, name, saved)

    @invariant()
    def identical_to_the_uninterrupted_run(self):
        if not hasattr(self, "subject"):
            return
        subject_params, subject_tree = snapshot(self.subject)
        model_params, model_tree = snapshot(self.model)
        assert_identical(subject_params, model_params, "parameters")
        assert_identical(_without_policy(subject_tree), _without_policy(model_tree), "state")
        assert self.subject_params[0] is _groups_of(self.subject)[0]["params"][0]  # still the user's arrays


def _groups_of_tree(tree: dict) -> list[dict]:
    return tree["base"]["param_groups"] if tree.get("optimizer") == "CProp" else tree["param_groups"]


TestOptimizerVersusUninterruptedRun = OptimizerVersusUninterruptedRun.TestCase
TestOptimizerVersusUninterruptedRun.settings = settings(
    settings.default, max_examples=100, stateful_step_count=30, deadline=None
)
