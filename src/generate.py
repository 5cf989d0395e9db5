"""Generate text from a checkpoint: `python src/generate.py ckpt=last prompt="ROMEO:"` (Hydra)."""

import sys

import hydra
from omegaconf import DictConfig

from charrnn.errors import run_command
from charrnn.run.config import quote_free_text


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from charrnn.run.generate import generate  # torch is imported here, after argument parsing

    run_command(generate, cfg)


if __name__ == "__main__":
    sys.argv = quote_free_text(sys.argv)  # prompt=café as typed
    main()
