"""baldflow-example: one plug-in of each baldflow seam (model, data source, trainer, strategy),
given to baldflow through the entry points in pyproject.toml."""

__version__ = "0.1.0"
