"""State a training task keeps beside its parameters, outside the gradient: its own module so
that a method (distillation.py) can declare it without importing the loop."""
import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class ExtraState:
  """State a task keeps beside its parameters, advanced after every update: DINO's teacher.

  With it the task's loss is `(params, batch, rng, extra) -> (loss, aux)`, and aux["metrics"]
  joins the step's metrics. The state is checkpointed with the rest (state["extra"]); a
  state with a `teacher` hands the teacher on (checkpoint.load_params).
  """
  init: Callable    # params -> extra, at step 0
  update: Callable  # (extra, new params, aux, step, schedule) -> extra
  check: Optional[Callable] = None  # logged metrics -> a warning, or "" (a collapse check)
