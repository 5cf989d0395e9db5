"""Export a checkpoint as one TorchScript file: `python src/export.py ckpt=last out=gen.pt`."""

import os
import sys

import hydra
from omegaconf import DictConfig

from charrnn.errors import CharRNNError


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from charrnn.export import export

    try:
        export(cfg)
    except CharRNNError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
