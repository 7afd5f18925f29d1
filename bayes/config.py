"""JAX settings for bayes, made explicit: nothing global changes when ``bayes`` is imported.

* :func:`configure` asks JAX for several CPU devices so chains run in parallel; it only
  works before JAX starts (XLA reads the device count once).
* Double precision is local: :func:`bayes.sample` runs under ``jax.enable_x64(True)`` (a
  context manager), so a user's own JAX code keeps its precision.
"""

from __future__ import annotations

import os
import warnings

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def _started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - jax layout changed
        return True
    return bool(xla_bridge.backends_are_initialized())


def configure(n_devices: int | None = None) -> int:
    """Ask JAX for ``n_devices`` CPU devices (default ``max(4, cpu_count)``) so that
    NumPyro's chains run in parallel.

    Call it first thing, before any JAX array exists. When JAX has already started, or
    ``XLA_FLAGS`` already sets a device count, nothing changes (a ``UserWarning`` says so
    in the first case). Returns the number of devices JAX will use.
    """
    import numpyro

    from nmfre.validation import integer

    n = max(4, os.cpu_count() or 1) if n_devices is None else integer(n_devices, "n_devices")
    if _started():
        import jax

        have = jax.local_device_count()
        if have < n:
            warnings.warn(f"JAX has already started with {have} device(s); call bayes.configure() before "
                          "anything uses JAX (chains then run vectorized on one device)", UserWarning, stacklevel=2)
        return have
    if DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        numpyro.set_host_device_count(n)
    import jax

    return jax.local_device_count()
