"""Learning-rate schedules that know the run's horizon: a step count or a wall-time budget."""

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Linear warm-up, then cosine decay to `min_lr_ratio` × lr. Progress: the larger of steps /
    `total_steps` and the used fraction of `max_time` (`time_fraction`): it ends with the budget."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        total_steps: float = math.inf,
        time_fraction: Callable[[], float] | None = None,
    ):
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.total_steps, self.time_fraction = total_steps, time_fraction
        super().__init__(optimizer)

    def progress(self) -> float:
        by_time = self.time_fraction() if self.time_fraction is not None else 0.0
        return min(1.0, max(self.last_epoch / self.total_steps, by_time))  # steps / inf = 0.0

    def factor(self) -> float:
        if self.last_epoch < self.warmup_steps:
            return (self.last_epoch + 1) / self.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress()))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine

    def get_lr(self) -> list[float]:
        return [base * self.factor() for base in self.base_lrs]

    def state_dict(self) -> dict:
        # the clock is re-attached on resume; a function must not go into a checkpoint
        return {k: v for k, v in super().state_dict().items() if k != "time_fraction"}
