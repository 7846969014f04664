"""``cprop-ref mutate``: mutation testing of a port with the harness as the test.

- the mutants: cosmic-ray's operators plus dropped in-place calls, none in annotations or
  parameter defaults, the same ids on every enumeration;
- isolation and resumption, with a real ``cprop-ref mutate`` process killed with SIGKILL
  mid-run on a user's port outside the project: the source is left as it was, and the
  next run keeps the finished mutants and runs the rest;
- the score of the torch port: in CI, one mutant per check family that its check alone must
  kill (the regression set: a check that loses its power fails it), with controls; a seeded
  sample and every mutant in the ``slow`` run (at least 98% of the behaviour-changing ones killed);
- the listed equivalent mutants of the torch port are equivalent: each, run on drawn inputs
  beside the unmutated port, gives the same outputs (values equal, NaN where NaN).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("cosmic_ray")

from cprop_ref.conformance import mutation  # noqa: E402
from cprop_ref.conformance.mutation import (  # noqa: E402
    TORCH_EQUIVALENTS,
    Settings,
    Target,
    enumerate_mutants,
    mutated_source,
)

ROOT = Path(__file__).resolve().parent.parent

#: A third-party-style port, outside the project: CProp-SGD in NumPy from cprop-ref's
#: functional core (the other optimizers are declined).
USER_PORT = '''
"""A user's port of CProp-SGD."""
from __future__ import annotations

import numpy as np

from cprop_ref.conformance import Unsupported
from cprop_ref.functional import sgd_direction
from cprop_ref.hyperparams import CPROP_HYPERPARAMS, SGD_HYPERPARAMS, check_sgd_group, validated
from cprop_ref.scale import cprop_scale, init_stats, scale_update, update_stats


class Run:
    def __init__(self, config, params: list[np.ndarray]) -> None:
        if config.optimizer != "CPropSGD" or config.dtype not in ("float32", "float64"):
            raise Unsupported("only CPropSGD in float32 and float64")
        self.hp = validated({**CPROP_HYPERPARAMS, **SGD_HYPERPARAMS}, config.hyperparams, "CPropSGD")
        check_sgd_group(self.hp, "CPropSGD")
        self.tensors = [np.array(p, copy=True) for p in params]
        self.stats = [None for _ in params]
        self.buffers = [None for _ in params]

    def step(self, grads) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is part of the arithmetic
            self._step(grads)

    def _step(self, grads) -> None:
        hp = self.hp
        for k, g in enumerate(grads):
            if g is None:
                continue
            stats = self.stats[k] if self.stats[k] is not None else init_stats(g.shape, g.dtype)
            stats = update_stats(stats, g, hp["cprop_beta"])
            s = cprop_scale(stats, hp["cprop_beta"], hp["cprop_c"], hp["cprop_eps"], hp["cprop_cdf"])
            d, self.buffers[k] = sgd_direction(
                self.tensors[k], g, self.buffers[k], momentum=hp["momentum"], dampening=hp["dampening"],
                weight_decay=hp["weight_decay"], nesterov=hp["nesterov"],
            )
            self.tensors[k] = self.tensors[k] - hp["lr"] * scale_update(d, s)
            self.stats[k] = stats

    def params(self) -> list[np.ndarray]:
        return [p.copy() for p in self.tensors]


def make(config, params):
    return Run(config, params)
'''


@pytest.fixture
def user_port(tmp_path: Path) -> Path:
    source = tmp_path / "user_port.py"
    source.write_text(textwrap.dedent(USER_PORT))
    return source


def _env(extra_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(extra_path), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_drop_call_statement_drops_only_calls_whose_result_is_discarded():
    from cosmic_ray.mutating import mutate_code

    mutation._cosmic_ray()
    from cosmic_ray.plugins import get_operator

    op = get_operator("cprop/DropCallStatement")()
    code = "x.mul_(b).add_(y)\ny = f(x)\nf(y)\n"
    assert mutate_code(code, op, 0) == "None\ny = f(x)\nf(y)\n"
    assert mutate_code(code, op, 1) == "x.mul_(b).add_(y)\ny = f(x)\nNone\n"
    assert mutate_code(code, op, 2) is None


def test_mutants_skip_annotations_and_defaults_and_keep_their_ids(user_port):
    code = "from __future__ import annotations\ndef f(x: int = 3, *, y: float = 1.0) -> int | None:\n    return x + 2\n"
    user_port.write_text(code)
    target = Target.resolve("user_port", str(user_port), "user_port:make")
    items = enumerate_mutants(target)
    lines = {item.mutations[0].start_pos[0] for item in items}
    assert lines == {3}, [item.job_id for item in items]  # only the body: x + 2
    assert [i.job_id for i in items] == [i.job_id for i in enumerate_mutants(target)]
    described = {
        (i.mutations[0].operator_name, mutated_source(target, i.mutations[0])[1].splitlines()[2]) for i in items
    }
    assert ("core/ReplaceBinaryOperator_Add_Sub", "    return x - 2") in described
    assert ("core/NumberReplacer", "    return x + 3") in described


def test_a_mutant_is_reached_when_its_statement_ran(user_port):
    """The trace records the lines that ran; a mutation on the second line of a statement that
    ran is reached, one in a branch that never ran is not."""
    user_port.write_text("def f(x):\n    y = (x +\n         2)\n    if x > 5:\n        return y * 3\n    return y\n")
    target = Target.resolve("user_port", str(user_port), "user_port:make")
    items = {i.job_id: i.mutations[0] for i in enumerate_mutants(target)}
    covered = {"user_port.py": [2, 4, 6]}  # what f(1) runs
    assert mutation.reached(target, items["user_port.py:core/NumberReplacer:0"], covered)  # the 2 on line 3
    assert not mutation.reached(target, items["user_port.py:core/ReplaceBinaryOperator_Mul_Div:0"], covered)
    assert mutation.reached(target, items["user_port.py:core/ReplaceComparisonOperator_Gt_GtE:0"], covered)


def test_a_decorator_is_reached_only_where_its_function_ran(user_port):
    """A decorator runs at import; it counts as reached only where the decorated function ran (a
    method only another factory calls exercises nothing a mutant of its decorator changes)."""
    user_port.write_text(
        "class A:\n    @staticmethod\n    def used(x):\n        return x\n\n"
        "    @staticmethod\n    def unused(x):\n        return x\n"
    )
    target = Target.resolve("user_port", str(user_port), "user_port:make")
    decorators = sorted(
        (m.start_pos[0], m)
        for m in (i.mutations[0] for i in enumerate_mutants(target))
        if m.operator_name == "core/RemoveDecorator"
    )
    assert [line for line, _ in decorators] == [2, 6]
    covered = {"user_port.py": [1, 2, 3, 4, 6, 7]}  # the import, then A.used(1)
    assert mutation.reached(target, decorators[0][1], covered)
    assert not mutation.reached(target, decorators[1][1], covered)


def test_bad_targets_name_what_is_wrong(tmp_path, user_port):
    with pytest.raises(ValueError, match="--factory is needed for module 'user_port'"):
        Target.resolve("user_port", str(user_port))
    with pytest.raises(ValueError, match="neither a package directory nor a .py file"):
        Target.resolve("user_port", str(tmp_path / "missing.py"), "user_port:make")
    with pytest.raises(ValueError, match="directory without __init__.py"):
        Target.resolve("user_port", str(tmp_path), "user_port:make")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no_such_port_module"], "--factory is needed for module 'no_such_port_module'"),
        (["cprop_ref.torch", "--jobs", "0"], "invalid --jobs=0: must be > 0"),
        (["cprop_ref.torch", "--sample", "-1"], "invalid --sample=-1: must be > 0"),
        (["cprop_ref.torch", "--examples", "0"], "invalid --examples=0: must be >= 1"),
        (["x", "--factory", "x:f", "--source", "nowhere.py"], "is neither a package directory nor a .py file"),
    ],
)
def test_the_command_refuses_bad_input_by_name(argv, message, capsys, tmp_path):
    from cprop_ref.cli import main

    assert main(["mutate", *argv, "--session", str(tmp_path / "s.sqlite")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()


def test_a_session_refuses_another_target(tmp_path, user_port):
    session = tmp_path / "session.sqlite"
    target = Target.resolve("user_port", str(user_port), "user_port:make")
    settings = Settings(3, ("open_loop",), ("float64",))
    mutation.Session(session, target, settings).open().close()
    with pytest.raises(ValueError, match="holds another target or other settings"):
        mutation.Session(session, target, Settings(4, ("open_loop",), ("float64",))).open()


def test_survivors_can_be_run_again_and_first(tmp_path, user_port):
    """``--retry-survivors`` makes a session's survivors pending again (a grown harness kills what
    it killed, so only they need running); ``--survivors-first`` reads another session's."""
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    path = tmp_path / "session.sqlite"
    session = mutation.Session(
        path, Target.resolve("user_port", str(user_port), "user_port:make"), Settings(3, ("open_loop",), ("float64",))
    )
    db = session.open()
    first, second = [item.job_id for item in list(db.pending_work_items)[:2]]
    for job_id, outcome in ((first, TestOutcome.SURVIVED), (second, TestOutcome.KILLED)):
        db.set_result(job_id, WorkResult(worker_outcome=WorkerOutcome.NORMAL, output="{}", test_outcome=outcome))
    pending = len(list(db.pending_work_items))
    db.close()
    assert mutation.survivors_of(path) == [first]
    session.forget(mutation.survivors_of(path))
    db = session.open()
    assert len(list(db.pending_work_items)) == pending + 1 and mutation.survivors_of(path) == []
    db.close()
    with pytest.raises(ValueError, match="no such session file"):
        mutation.survivors_of(tmp_path / "missing.sqlite")


def test_a_port_that_fails_unmutated_is_refused(tmp_path, user_port):
    user_port.write_text(user_port.read_text().replace('- hp["lr"]', '+ hp["lr"]'))
    target = Target.resolve("user_port", str(user_port), "user_port:make")
    settings = Settings(20, ("open_loop",), ("float64",))
    with pytest.raises(ValueError, match="the unmutated port user_port:make does not pass the harness"):
        mutation.run_session(tmp_path / "s.sqlite", target, settings)


def _finished(session: Path) -> int:
    """Mutants run (not those skipped as never reached)."""
    with sqlite3.connect(session) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM work_results WHERE worker_outcome != 'SKIPPED'").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0


def test_killed_run_leaves_the_source_intact_and_resumes(tmp_path, user_port):
    """A real ``cprop-ref mutate`` on a user's port, killed with SIGKILL once a mutant has
    finished: the port's source is unchanged, and the next run resumes the session."""
    original = user_port.read_bytes()
    session = tmp_path / "session.sqlite"
    command = [sys.executable, "-m", "cprop_ref.cli", "mutate", "user_port", "--factory", "user_port:make"]
    command += ["--source", str(user_port), "--session", str(session), "--examples", "10", "--jobs", "1"]
    log = tmp_path / "mutate.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=_env(tmp_path), start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            deadline = time.monotonic() + 300
            while _finished(session) < 1 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert process.poll() is None, log.read_text()
            os.killpg(process.pid, signal.SIGKILL)  # the runner, its fork server and the mutant in flight
        finally:
            process.wait()
    assert user_port.read_bytes() == original
    assert [p.name for p in tmp_path.rglob("*.py")] == ["user_port.py"]  # no mutated copy left here
    done = _finished(session)
    total = len(enumerate_mutants(Target.resolve("user_port", str(user_port), "user_port:make")))
    assert 1 <= done < total

    rerun = subprocess.run(
        [*command, "--sample", "2"], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode in (0, 1), rerun.stderr
    assert _finished(session) == done + 2
    assert f"mutants       : {total} ({done + 2} run, 0 on lines the harness never runs" in rerun.stdout
    assert f"{total - done - 2} pending)" in rerun.stdout
    assert user_port.read_bytes() == original


def test_user_port_mutant_reports_the_killing_check(user_port):
    target = Target.resolve("user_port", str(user_port), "user_port:make")
    settings = Settings(50, ("open_loop", "injected", "closed_loop"), ("float32", "float64"))
    item = next(
        i
        for i in enumerate_mutants(target)
        if i.mutations[0].operator_name == "core/ReplaceBinaryOperator_Sub_Add"
        and mutation.changed_line(*mutated_source(target, i.mutations[0]), i.mutations[0].start_pos[0])[1]
        == 'self.tensors[k] = self.tensors[k] + hp["lr"] * scale_update(d, s)'
    )
    payload = mutation.run_job(mutation._job(target, settings, item.mutations[0]), timeout=300)
    assert payload["outcome"] == "killed" and payload["killed_by"] == "open_loop", payload
    assert "param of tensor" in payload["detail"]


# -- the torch port ------------------------------------------------------------------------------


def _torch_target() -> Target:
    pytest.importorskip("torch")
    return Target.resolve("cprop_ref.torch")


#: The CI regression set: one mutant of the torch port per check family, each of which that
#: check alone must kill with one generated example (the edge cases by construction do the
#: work, whatever the seed): ``(check, factory, file, operator, line before, line after)``. If
#: a check loses its power (an edge case dropped, a comparison loosened, the check switched
#: off), its mutant survives and the test fails.
REGRESSION_MUTANTS = (
    (
        "open_loop",
        "torch_port",
        "functional.py",
        "core/ReplaceBinaryOperator_Add_Sub",
        "return torch.sqrt(ratio) + eps",
        "return torch.sqrt(ratio) - eps",
    ),
    ("open_loop", "torch_port", "base.py", "core/RemoveDecorator", "@torch.no_grad()", "(line removed)"),
    (
        "injected",
        "torch_port",
        "adam.py",
        "core/ReplaceBinaryOperator_Pow_Mul",
        'step_size = hp["lr"] / (1.0 - beta1**t)',
        'step_size = hp["lr"] / (1.0 - beta1*t)',
    ),
    (
        "closed_loop",
        "torch_port",
        "sgd.py",
        "core/ReplaceBinaryOperator_Sub_Add",
        'return p - hp["lr"] * scale_update(d, s)',
        'return p + hp["lr"] * scale_update(d, s)',
    ),
    (
        "resume",
        "torch_port",
        "base.py",
        "core/ReplaceComparisonOperator_Eq_NotEq",
        "if wanted == p.dtype or p not in self.state:",
        "if wanted != p.dtype or p not in self.state:",
    ),
    (
        "refusals",
        "torch_port",
        "sgd.py",
        "cprop/DropCallStatement",
        "check_sgd_group(hp, where)",
        "None",
    ),
    (
        "refusals",
        "torch_port",
        "base.py",
        "core/NumberReplacer",
        'where = f"{type(self).__name__} param group {len(self.param_groups) - 1}"',
        'where = f"{type(self).__name__} param group {len(self.param_groups) - 0}"',
    ),
    ("refusals", "torch_port", "base.py", "cprop/DropCallStatement", "self.param_groups.pop()", "None"),
    (
        "groups",
        "torch_port_foreach",
        "base.py",
        "core/NumberReplacer",
        "work[-1].append((p, grad, hp))",
        "work[- 0].append((p, grad, hp))",
    ),
)

#: Mutants of the torch port in the slow sample: a seeded sample, run with verify's defaults.
CI_SAMPLE = 3


def _original_line(target: Target, mutation_spec) -> str:
    """The mutated line before the mutation, from the source (cheap: no parse)."""
    text = target.file_path(str(mutation_spec.module_path)).read_text(encoding="utf-8")
    return text.splitlines()[mutation_spec.start_pos[0] - 1].strip()


def _find_mutant(target: Target, items: list, file: str, operator: str, before: str, after: str) -> object:
    for item in items:
        m = item.mutations[0]
        if Path(m.module_path).name == file and m.operator_name == operator and _original_line(target, m) == before:
            if mutation.changed_line(*mutated_source(target, m), m.start_pos[0]) == (before, after):
                return item
    raise AssertionError(f"regression mutant not found (the source changed?): {file} {operator} `{before}`")


@pytest.fixture(scope="module")
def regression_items():
    target = _torch_target()
    items = enumerate_mutants(target)
    return target, {spec: _find_mutant(target, items, *spec[2:]) for spec in REGRESSION_MUTANTS}


@pytest.mark.parametrize(
    "spec", REGRESSION_MUTANTS, ids=[f"{s[0]}-{s[2]}-{s[3].split('/')[1]}" for s in REGRESSION_MUTANTS]
)
def test_each_check_family_kills_its_regression_mutant(spec, regression_items):
    """The score's regression test within the CI budget: each mutant, run as ``cprop-ref mutate``
    runs it (a private copy of the port's source, a process of its own), is killed by its check
    alone with one generated example besides the edge cases (each a few seconds of CPU)."""
    target, items = regression_items
    check, factory = spec[0], f"cprop_ref.conformance:{spec[1]}"
    settings = Settings(1, (check,), Settings.verify_defaults().dtypes)
    payload = mutation.run_job(mutation._job(target, settings, items[spec].mutations[0], factory), timeout=600)
    assert payload["outcome"] == "killed" and payload["killed_by"] == check, payload
    assert not payload.get("harness_crash"), payload


def test_the_regression_kills_are_the_checks_doing(regression_items):
    """Controls: the refusal mutant survives the groups check (it breaks no step), and the groups
    mutant survives the groups check under the per-tensor factory (each gradient there carries its
    own group's hyperparameters; the ``foreach`` path takes one group's for all): what kills each
    is the behaviour its own check looks at, through the factory that runs the mutated line."""
    target, items = regression_items
    for killer, check, factory in (("refusals", "groups", "torch_port"), ("groups", "groups", "torch_port")):
        spec = next(s for s in REGRESSION_MUTANTS if s[0] == killer)
        settings = Settings(1, (check,), ("float32",))
        job = mutation._job(target, settings, items[spec].mutations[0], f"cprop_ref.conformance:{factory}")
        payload = mutation.run_job(job, timeout=600)
        assert payload["outcome"] == "survived", payload


@pytest.mark.slow  # about 130 s of CPU (the unmutated port's traced verify run, then each mutant's)
def test_sampled_torch_mutants_are_killed(tmp_path):
    target = _torch_target()
    report = mutation.run_session(
        tmp_path / "torch.sqlite", target, Settings.verify_defaults(), jobs=1, sample=CI_SAMPLE, seed=2026
    )
    run = [r for r in report.results if r.outcome != "not reached"]
    assert len(run) == CI_SAMPLE and not report.errors, report.format()
    missed = [r for r in report.survivors if not r.equivalent]
    assert not missed, report.format()


@pytest.mark.slow
def test_torch_port_mutation_score(tmp_path):
    """Every mutant of the torch port under both eager factories (hours on two cores): at least
    98% of the behaviour-changing ones killed by verify with its defaults."""
    target = _torch_target()
    report = mutation.run_session(
        tmp_path / "torch.sqlite", target, Settings.verify_defaults(), jobs=os.cpu_count() or 1
    )
    assert report.pending == 0 and not report.errors, report.format()
    assert report.score >= 0.98, report.format()


def _equivalent_items(target: Target) -> list[tuple[mutation.EquivalentMutant, object]]:
    items = enumerate_mutants(target)
    found = []
    for equivalent in TORCH_EQUIVALENTS:
        matching = []
        for item in items:
            m = item.mutations[0]
            if Path(m.module_path).name == equivalent.file and m.operator_name == equivalent.operator:
                if _original_line(target, m) != equivalent.before:  # the cheap test first: no parse
                    continue
                if equivalent.definition is not None and m.definition_name != equivalent.definition:
                    continue
                before, after = mutation.changed_line(*mutated_source(target, m), m.start_pos[0])
                if (before, after) == (equivalent.before, equivalent.after):
                    matching.append(item)
        assert matching, f"listed equivalent mutant not found (the source changed?): {equivalent}"
        found += [(equivalent, item) for item in matching]
    return found


def _check_equivalents(examples: int) -> None:
    target = _torch_target()
    settings = Settings.verify_defaults()
    cases = mutation.draw_cases(examples, settings.dtypes, settings.checks)
    # The control: a mutant that changes the standard error must differ on the same cases, or
    # the comparison could not fail.
    control = next(
        i
        for i in enumerate_mutants(target)
        if i.mutations[0].operator_name == "core/ReplaceBinaryOperator_Add_Sub"
        and mutation.changed_line(*mutated_source(target, i.mutations[0]), i.mutations[0].start_pos[0])[1]
        == "return torch.sqrt(ratio) - eps"
    )
    difference, original = mutation.differential_check(target, control.mutations[0], cases)
    assert difference is not None and difference.startswith("case[")
    # Under every factory of the port: a mutant of the foreach path runs only under its factory.
    for factory in target.factories:
        original = None
        for equivalent, item in _equivalent_items(target):
            difference, original = mutation.differential_check(target, item.mutations[0], cases, original, factory)
            assert difference is None, f"{equivalent} is not equivalent under {factory}: {difference}"


@pytest.mark.slow  # about 270 s of CPU on the 2-core machine: past the CI budget
@pytest.mark.skipif(not TORCH_EQUIVALENTS, reason="no equivalent mutants listed")
def test_listed_equivalent_mutants_give_the_same_outputs():
    """Each listed equivalent mutant and the unmutated port on the same drawn inputs (10 per
    check in CI, 300 in the slow run): every parameter, scale and statistic after every step
    equal (NaN where NaN; -0.0 == 0.0 as the checks compare), the same exceptions; a mutant
    that changes the standard error, on the same inputs, differs."""
    _check_equivalents(10)


@pytest.mark.slow
@pytest.mark.skipif(not TORCH_EQUIVALENTS, reason="no equivalent mutants listed")
def test_listed_equivalent_mutants_give_the_same_outputs_thoroughly():
    _check_equivalents(300)
