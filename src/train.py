"""Train a character-level RNN: `python src/train.py [group=option] [key=value] ...` (Hydra).

`resume=last` (or a run dir, or its last.ckpt) continues a run in its own dir: it is turned into
that run's overrides + ckpt_path + hydra.run.dir before Hydra starts (charrnn.resume.resume_argv).
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charrnn.errors import CharRNNError

log = logging.getLogger("charrnn")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from charrnn.safety import TrainingStopped
    from charrnn.training import train

    hydra_cfg = HydraConfig.get()
    try:
        return train(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except TrainingStopped as stop:
        resume = f"; continue with: python src/train.py resume={hydra_cfg.runtime.output_dir}"
        log.warning("%s%s", stop, resume if stop.saved else "")
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:  # Ctrl-C before training started: there is nothing to save yet
        log.warning("interrupted before training started; nothing was saved")
        sys.exit(130)
    except CharRNNError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("error: %s", err)
        sys.exit(1)


if __name__ == "__main__":
    from charrnn.resume import resume_argv

    try:
        sys.argv = resume_argv(sys.argv)
    except CharRNNError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    main()
