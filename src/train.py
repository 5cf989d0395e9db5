"""Train a character-level RNN: `python src/train.py [group=option] [key=value] ...` (Hydra).

`resume=last` (or a run dir, or its last.ckpt) continues a run in its own dir: it is turned into
that run's overrides + ckpt_path + hydra.run.dir before Hydra starts (charrnn.run.resume).
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from charrnn.errors import CharRNNError, exit_with
from charrnn.run.config import quote_free_text, validate_train
from charrnn.run.sweep import describe_error, is_rank_zero, update_result

log = logging.getLogger("charrnn")


def _train(cfg: DictConfig, run_dir: Path) -> float:
    validate_train(cfg)  # a bad value fails here, before Lightning is imported
    from charrnn.run.guards import TrainingStopped
    from charrnn.run.train import train

    try:
        return train(cfg, run_dir, list(HydraConfig.get().overrides.task))
    except TrainingStopped as stop:
        resume = f"; continue with: python src/train.py resume={run_dir}" if stop.saved else ""
        log.warning("%s%s", stop, resume)
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:  # Ctrl-C before training started: there is nothing to save yet
        log.warning("interrupted before training started; nothing was saved")
        sys.exit(130)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return _train(cfg, run_dir)
    except Exception as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Hydra ends a whole sweep at its first failed job; a sweep records it and goes on.
            # No value: the Optuna sweeper marks the trial failed, the summary shows the error.
            unexpected = not isinstance(err, CharRNNError)  # its traceback goes to the job's log
            log.error("job failed: %s", describe_error(err), exc_info=unexpected)
            if is_rank_zero():
                update_result(run_dir, status="failed", error=describe_error(err))
            return None
        if not isinstance(err, CharRNNError):
            raise
        exit_with(err, log.error)


if __name__ == "__main__":
    if any(arg.startswith("resume=") for arg in sys.argv[1:]):
        from charrnn.run.resume import resume_argv

        try:
            sys.argv = resume_argv(sys.argv)
        except CharRNNError as err:
            exit_with(err)
    sys.argv = quote_free_text(sys.argv)  # callbacks.sample_text.prompt=café as typed
    main()
