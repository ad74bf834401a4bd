"""baldflow: deep Bayesian batch active learning as an auditable pipeline."""

__version__ = "0.1.0"
