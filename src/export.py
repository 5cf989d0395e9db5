"""Export a checkpoint as one generator file: `python src/export.py ckpt=last out=gen.pt2`."""

from charrnn.run.config import run_command_line

if __name__ == "__main__":
    run_command_line("export", "charrnn.run.export:export")
