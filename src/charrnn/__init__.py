"""charrnn: character-level GRU/LSTM language models on Lightning and Hydra."""

from charrnn.errors import CharRNNError

__all__ = ["CharRNNError"]
