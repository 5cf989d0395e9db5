"""Train a character-level RNN: `python src/train.py [group=option] [key=value] ...` (Hydra)."""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charrnn.errors import CharRNNError


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from charrnn.training import train

    hydra_cfg = HydraConfig.get()
    try:
        return train(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except CharRNNError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        logging.getLogger("charrnn").error("error: %s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
