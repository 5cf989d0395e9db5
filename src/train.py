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

from charrnn.config import validate_train
from charrnn.errors import CharRNNError

log = logging.getLogger("charrnn")


def _fail(err: CharRNNError, printer) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    printer(f"error: {err}")
    sys.exit(1)


def _train(cfg: DictConfig) -> float:
    validate_train(cfg)  # a bad value fails here, before torch and Lightning are imported
    if cfg.get("ckpt_path"):  # and a bad checkpoint file before Lightning is
        from charrnn.resume import read_checkpoint

        read_checkpoint(cfg.ckpt_path, mmap=True)
    from charrnn.safety import TrainingStopped
    from charrnn.training import train

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        return train(cfg, Path(run_dir), list(HydraConfig.get().overrides.task))
    except TrainingStopped as stop:
        log.warning("%s%s", stop, f"; continue with: python src/train.py resume={run_dir}"
                    if stop.saved else "")
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:  # Ctrl-C before training started: there is nothing to save yet
        log.warning("interrupted before training started; nothing was saved")
        sys.exit(130)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return _train(cfg)
    except CharRNNError as err:
        _fail(err, log.error)


if __name__ == "__main__":
    if any(arg.startswith("resume=") for arg in sys.argv[1:]):
        from charrnn.resume import resume_argv

        try:
            sys.argv = resume_argv(sys.argv)
        except CharRNNError as err:
            _fail(err, lambda line: print(line, file=sys.stderr))
    main()
