"""A callback the start-up benchmark adds to `src/train.py`: notes the wall time of the first step.

bench/run.py puts this directory on PYTHONPATH of the child process and adds
`+callbacks.first_step._target_=first_step.FirstStepClock`; the time goes to $BENCH_FIRST_STEP_FILE.
"""

import os
import time

import lightning as L


class FirstStepClock(L.Callback):
    def __init__(self):
        self.done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.done:
            self.done = True
            with open(os.environ["BENCH_FIRST_STEP_FILE"], "w") as f:
                f.write(repr(time.time()))
