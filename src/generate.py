"""Generate text from a checkpoint: `python src/generate.py ckpt=last prompt="ROMEO:"` (Hydra)."""

import os
import sys

import hydra
from omegaconf import DictConfig

from charrnn.errors import CharRNNError, exit_with


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from charrnn.generation import generate  # torch is imported here, after argument parsing

    try:
        generate(cfg)
    except CharRNNError as err:
        exit_with(err)
    except BrokenPipeError:  # `... | head`: the reader has gone, stop quietly
        sys.stderr.close()
        os._exit(0)


if __name__ == "__main__":
    main()
