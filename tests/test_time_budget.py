"""`--time-budget`: the step plan from measured step times, the shortened schedule, and a real run that stops on time."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState
from transformers.optimization import get_linear_schedule_with_warmup
from typer.testing import CliRunner

from gamjeong.cli import app
from gamjeong.samples import samples_path
from gamjeong.training import budget as budget_module
from gamjeong.training.budget import TimeBudgetCallback


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run_steps(callback: TimeBudgetCallback, clock: FakeClock, *, seconds_per_step: float, max_steps: int):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=100, num_training_steps=max_steps)
    args = SimpleNamespace(warmup_ratio=0.1)
    state, control = TrainerState(), TrainerControl()
    state.max_steps = max_steps
    callback.on_train_begin(args, state, control)
    evaluated = []
    for step in range(1, max_steps + 1):
        clock.now += seconds_per_step
        state.global_step = step
        control = callback.on_step_end(args, state, TrainerControl(), lr_scheduler=scheduler)
        if control.should_evaluate:
            evaluated.append(step)
        if control.should_training_stop:
            break
    return state, scheduler, evaluated


def test_plan_fits_the_budget_and_shortens_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    callback = TimeBudgetCallback(60.0, eval_fraction_cost=10.0, measure_steps=5, evaluations=3)
    state, scheduler, evaluated = _run_steps(callback, clock, seconds_per_step=0.1, max_steps=10_000)
    plan = callback.plan
    # 60 s at 0.1 s per step is 600 steps, less three evaluations of ~10 steps each
    assert plan.seconds_per_step == pytest.approx(0.1)
    assert plan.planned_steps == pytest.approx(570, abs=2)
    assert state.global_step == plan.planned_steps
    assert plan.stopped_by == "plan"
    assert evaluated == plan.evaluation_steps and evaluated[-1] == plan.planned_steps and len(evaluated) == 3
    # the linear schedule now ends at the planned step (not at the 10,000-step upper bound)
    (lr_lambda,) = scheduler.lr_lambdas
    assert isinstance(lr_lambda, functools.partial)
    assert lr_lambda.keywords["num_training_steps"] == plan.planned_steps
    assert lr_lambda.keywords["num_warmup_steps"] == int(0.1 * plan.planned_steps)
    assert lr_lambda(plan.planned_steps) == 0.0


def test_a_slower_machine_stops_at_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    callback = TimeBudgetCallback(60.0, eval_fraction_cost=0.0, measure_steps=5, evaluations=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=10_000)
    args, state = SimpleNamespace(warmup_ratio=0.0), TrainerState()
    state.max_steps = 10_000
    callback.on_train_begin(args, state, TrainerControl())
    for step in range(1, 10_001):
        # the first steps are fast, then the machine gets busy and every step takes ten times as long
        clock.now += 0.1 if step <= 10 else 1.0
        state.global_step = step
        control = callback.on_step_end(args, state, TrainerControl(), lr_scheduler=scheduler)
        if control.should_training_stop:
            break
    assert callback.plan.stopped_by == "time"
    assert control.should_evaluate and control.should_save  # the last state is evaluated, so the best one is kept
    assert clock.now - 100.0 <= 61.0
    assert state.global_step < callback.plan.planned_steps


def test_train_with_time_budget_stops_early_and_keeps_the_best(tmp_path: Path, tiny_model_dir: Path) -> None:
    output = tmp_path / "budgeted"
    args = ["train", "--data", str(samples_path()), "--base-model", str(tiny_model_dir), "--output", str(output)]
    args += ["--time-budget", "0.05", "--epochs", "500", "--batch-size", "4", "--max-length", "32", "--seed", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    training = json.loads((output / "metrics.json").read_text())["training"]
    plan = training["time_budget"]
    assert plan["budget_s"] == 3.0
    assert plan["planned_steps"] is not None and plan["stopped_by"] in ("plan", "time")
    steps_for_500_epochs = 500 * training["global_step"] / training["epochs_completed"]
    assert training["global_step"] < steps_for_500_epochs / 10
    assert training["best_checkpoint"] is not None  # evaluated and checkpointed before stopping
