"""twin: an open, differentiable, Bayesian digital twin of fed-batch fermentation.

Float64 everywhere: importing `twin` enables `jax_enable_x64`.

Compiled programs are kept on disk (JAX's persistent compilation cache), so that the second
calibration, forecast or recipe solve on a machine loads its simulation instead of compiling it
again (on the 12-batch IndPenSim history: 23 s of compilation becomes 3 s of loading). The cache
is in `$TWIN_CACHE_DIR/jax`, default `~/.cache/twin/jax` (`$XDG_CACHE_HOME` is honoured), at
most 2 GB (least recently used entries go first), and keeps every program however quickly it
compiled. `JAX_COMPILATION_CACHE_DIR` and `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` set by
the user win, and `TWIN_COMPILATION_CACHE=0` switches the cache off.
"""

import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

COMPILATION_CACHE_BYTES = 2 * 1024**3


def _compilation_cache() -> None:
    if os.environ.get("TWIN_COMPILATION_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if jax.config.jax_compilation_cache_dir:  # the user's own setting
        return
    try:  # JAX keeps the size limit only with filelock (a dependency of twin)
        import filelock  # noqa: F401
    except ImportError:
        return
    base = os.environ.get("TWIN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "twin"
    path = Path(base) / "jax"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as before
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        # every program, not only those that took a second to compile: NumPyro runs a model op
        # by op once to find its sites, and compiling those ~100 small programs anew took 2.4 s
        # of every calibration (12-batch IndPenSim history; 4.7 s -> 2.3 s)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # a computation compiled before this import (numpyro compiles a few) has already set the
    # cache up without a folder; start it again with this one
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


_compilation_cache()
