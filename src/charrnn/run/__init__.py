"""The commands (train, generate, export) and the machinery around a run: config checks, checkpoints,
resume, guards and sweeps. Importing it registers the config's resolvers (see run.config)."""

from charrnn.run import config as _config  # noqa: F401
