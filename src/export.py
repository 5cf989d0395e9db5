"""Export a checkpoint as one generator file: `python src/export.py ckpt=last out=gen.pt2`."""

import sys

import hydra
from omegaconf import DictConfig

from charrnn.errors import run_command
from charrnn.run.config import quote_free_text


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from charrnn.run.export import export  # torch is imported here, after argument parsing

    run_command(export, cfg)


if __name__ == "__main__":
    sys.argv = quote_free_text(sys.argv)  # prompt=café as typed
    main()
