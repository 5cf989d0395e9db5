"""A callback the benchmark adds to `src/train.py`: notes the wall time of the first step and the
peak RSS of the run.

bench/run.py and bench/scale.py put this directory on PYTHONPATH of the child process and add
`+callbacks.first_step._target_=first_step.FirstStepClock`; it writes
{"first_step": time, "first_step_rss_mb": ..., "peak_rss_mb": ...} to $BENCH_FIRST_STEP_FILE at
the first step (both RSS figures the peak so far) and again, with the peak over the whole training,
when training ends.
"""

import json
import os
import time

import lightning as L
from scale import peak_rss_mb


class FirstStepClock(L.Callback):
    def __init__(self):
        self.first_step = self.first_step_rss_mb = None

    def _write(self) -> None:
        clock = {"first_step": self.first_step, "first_step_rss_mb": self.first_step_rss_mb}
        with open(os.environ["BENCH_FIRST_STEP_FILE"], "w") as f:
            json.dump({**clock, "peak_rss_mb": peak_rss_mb()}, f)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step is None:
            self.first_step, self.first_step_rss_mb = time.time(), peak_rss_mb()
            self._write()

    def on_train_end(self, trainer, pl_module) -> None:
        self._write()
