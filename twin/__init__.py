"""twin: an open, differentiable, Bayesian digital twin of fed-batch fermentation.

Float64 everywhere: importing `twin` enables `jax_enable_x64`.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
