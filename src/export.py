"""Export a checkpoint as one TorchScript file: `python src/export.py ckpt=last out=gen.pt`."""

import hydra
from omegaconf import DictConfig

from charrnn.errors import CharRNNError, exit_with


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from charrnn.export import export

    try:
        export(cfg)
    except CharRNNError as err:
        exit_with(err)


if __name__ == "__main__":
    main()
