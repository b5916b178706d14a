"""Training for a wall-clock budget instead of a step count (`--time-budget MINUTES`).

A step count means nothing to a user on an unknown machine: 600 steps are 5 minutes on one CPU and 40 on another. With
a time budget the Trainer starts with an upper bound of steps; after a few measured steps `TimeBudgetCallback` plans
how many steps fit (leaving room for the evaluations), shortens the learning-rate schedule to end exactly there, asks
for evaluations at fixed fractions of the plan, and stops at the planned step, or at the budget's end if the machine
slows down, with a last evaluation so the best checkpoint is kept (load_best_model_at_end).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

from transformers import TrainerCallback

log = logging.getLogger(__name__)


@dataclass
class BudgetPlan:
    """What the callback decided, for metrics.json and the model card."""

    budget_s: float
    seconds_per_step: float | None = None
    planned_steps: int | None = None
    evaluation_steps: list[int] = field(default_factory=list)
    stopped_by: str | None = None  # "plan", "time" or "max_steps" (the epochs asked for ran out first)

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget_s": round(self.budget_s, 1),
            "seconds_per_step": None if self.seconds_per_step is None else round(self.seconds_per_step, 4),
            "planned_steps": self.planned_steps,
            "evaluation_steps": self.evaluation_steps,
            "stopped_by": self.stopped_by,
        }


def _rescheduled(lr_lambda: Any, total_steps: int, warmup_ratio: float) -> Any:
    """The same schedule function with a new length (Transformers builds its schedules as functools.partial)."""
    if not isinstance(lr_lambda, functools.partial) or "num_training_steps" not in lr_lambda.keywords:
        return None
    keywords = dict(lr_lambda.keywords, num_training_steps=total_steps)
    if "num_warmup_steps" in keywords:
        keywords["num_warmup_steps"] = int(warmup_ratio * total_steps)
    return functools.partial(lr_lambda.func, *lr_lambda.args, **keywords)


class TimeBudgetCallback(TrainerCallback):
    """Plan the number of steps from the measured step time so training (and its evaluations) ends within budget."""

    def __init__(
        self,
        budget_s: float,
        *,
        eval_fraction_cost: float,
        measure_steps: int = 8,
        evaluations: int = 3,
        min_steps: int = 1,
    ) -> None:
        """`eval_fraction_cost`: one evaluation's cost in training steps (validation batches are forward-only)."""
        self.plan = BudgetPlan(budget_s=budget_s)
        self.eval_cost_steps = eval_fraction_cost
        self.measure_steps = max(2, measure_steps)
        self.evaluations = max(1, evaluations)
        self.min_steps = min_steps
        self._started: float | None = None
        self._measure_from: tuple[int, float] | None = None  # the first step is slow (allocations), skip it
        self._eval_seconds: float | None = None  # the last evaluation's measured wall time
        self._eval_started: float | None = None

    # --- helpers -------------------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started

    def _eval_estimate_s(self) -> float:
        if self._eval_seconds is not None:
            return self._eval_seconds
        return self.eval_cost_steps * (self.plan.seconds_per_step or 0.0)

    def _make_plan(self, state: TrainerState, args: TrainingArguments, lr_scheduler: Any) -> None:
        step, since = self._measure_from or (0, self._started or time.perf_counter())
        per_step = (time.perf_counter() - since) / max(1, state.global_step - step)
        remaining = self.plan.budget_s - self._elapsed()
        # each evaluation costs about `eval_cost_steps` steps; the last one runs after the final step
        steps_left = remaining / per_step - self.evaluations * self.eval_cost_steps
        planned = max(self.min_steps, state.global_step + 1, int(state.global_step + steps_left))
        planned = min(planned, state.max_steps)  # never more than the epochs asked for
        self.plan.seconds_per_step = per_step
        self.plan.planned_steps = planned
        self.plan.evaluation_steps = sorted(
            {max(1, round(planned * (i + 1) / self.evaluations)) for i in range(self.evaluations)}
        )
        lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        if lr_scheduler is not None and hasattr(lr_scheduler, "lr_lambdas"):
            new = [_rescheduled(f, planned, args.warmup_ratio) for f in lr_scheduler.lr_lambdas]
            if all(f is not None for f in new):
                lr_scheduler.lr_lambdas = new
            else:
                log.warning("time budget: this learning-rate schedule cannot be shortened; it keeps its length")
        log.info(
            "time budget %.0f s: %.3f s per step -> %d steps, evaluations at %s",
            self.plan.budget_s,
            per_step,
            planned,
            self.plan.evaluation_steps,
        )

    # --- Trainer events ----------------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._started = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        step = state.global_step
        if self._measure_from is None and step >= 1:
            self._measure_from = (step, time.perf_counter())
        elif (
            self.plan.planned_steps is None
            and self._measure_from
            and step >= self._measure_from[0] + self.measure_steps
        ):
            self._make_plan(state, args, kwargs.get("lr_scheduler"))
        planned = self.plan.planned_steps
        # the final evaluation must fit too: stop when the time left would not cover it
        out_of_time = self._elapsed() + self._eval_estimate_s() >= self.plan.budget_s
        reached_plan = planned is not None and step >= planned
        if reached_plan or out_of_time or step >= state.max_steps:
            self.plan.stopped_by = "plan" if reached_plan else "time" if out_of_time else "max_steps"
            control.should_training_stop = True
            control.should_evaluate = control.should_save = True  # evaluated and checkpointed: best one kept
        elif planned is not None and step in self.plan.evaluation_steps:
            control.should_evaluate = control.should_save = True
        else:
            # our own evaluation points replace the Trainer's (its eval_steps is set beyond any plan)
            control.should_evaluate = control.should_save = False
        return control

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._eval_started is None:
            self._eval_started = time.perf_counter()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self._eval_started is not None:
            self._eval_seconds = time.perf_counter() - self._eval_started
            self._eval_started = None
