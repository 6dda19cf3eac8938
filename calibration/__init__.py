"""Bayesian calibration of the twin per strain (NumPyro). Imports `twin`; `twin` never imports this."""

import twin  # noqa: F401  (enables float64)

__version__ = "0.1.0"
