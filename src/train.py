"""Train a character-level RNN: `python src/train.py [group=option] [key=value] ...` (Hydra)."""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from charrnn.errors import CharRNNError
from charrnn.results import describe_error, is_rank_zero, update_result

log = logging.getLogger("charrnn")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from charrnn.training import train

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        return train(cfg, run_dir, list(hydra_cfg.overrides.task))
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
        log.error("error: %s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
