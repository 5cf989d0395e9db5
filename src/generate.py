"""Generate text from a checkpoint: `python src/generate.py ckpt=last prompt="ROMEO:"` (Hydra)."""

from charrnn.run.config import run_command_line

if __name__ == "__main__":
    run_command_line("generate", "charrnn.run.generate:generate")
