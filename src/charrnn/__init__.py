"""charrnn: character-level GRU/LSTM language models on Lightning and Hydra. The pipeline, in
reading order: corpus → vocab → data → net (fused_gru) → model → schedules → sampling → callbacks;
the commands and what keeps a run safe are in charrnn.run."""

from charrnn.errors import CharRNNError as CharRNNError
