"""charrnn: character-level GRU/LSTM language models on Lightning and Hydra."""

from charrnn import resolvers as _resolvers  # noqa: F401  (registers ${cores_per_job:...})
from charrnn.errors import CharRNNError

__all__ = ["CharRNNError"]
