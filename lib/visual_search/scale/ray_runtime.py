"""Starting and joining Ray: one place, so the embedding job and the sharded index start it the same way.

On a laptop, ``start()`` launches a local Ray (a head node with ``num_cpus`` worker
slots, no dashboard, a small object store). On a real cluster, pass the head's
address, ``start(address="ray://head:10001")`` or ``start(address="auto")`` from a
node of the cluster, and the same jobs run there with no other change: Ray
schedules the actors and tasks, and the code never says where.

Ray is imported here, lazily, so ``import visual_search.scale`` costs nothing for
the parts that do not need it (the capacity planner, the local sharded index).
"""

from __future__ import annotations

import os
import time
from typing import Any

from visual_search.errors import ScaleError

#: Small enough for a 2-core laptop running tests; a local Ray otherwise takes 30% of memory.
DEFAULT_OBJECT_STORE_BYTES = 256 * 2**20
#: Tries to start a local Ray: under heavy load its node can miss Ray's own start-up deadline.
START_ATTEMPTS = 3


def ray_module():
    """``import ray``, with a clear error when it is not installed."""
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is a dependency of the package
        raise ScaleError(f"Ray is not installed ({err}); `make install` installs ray[data]") from None
    return ray


def start(address: str | None = None, num_cpus: int | None = None, object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES, **kwargs: Any):
    """Connect to Ray, starting a local one when ``address`` is None. Returns the ``ray`` module.

    Args:
        address: None for a new local Ray on this machine; ``"auto"``, ``"HOST:PORT"`` or
            ``"ray://HOST:10001"`` to join an existing cluster (then ``num_cpus`` and the object
            store size are the cluster's, not ours).
        num_cpus: worker slots of the local Ray (default: this machine's cores).
        object_store_bytes: the local object store's size.
        **kwargs: passed to ``ray.init`` as they are.

    If Ray is already initialised in this process it is reused as it is. A local start that
    times out (Ray gives its node a fixed 30 s, which a loaded 2-core machine can miss) is
    retried up to ``START_ATTEMPTS`` times.
    """
    ray = ray_module()
    if ray.is_initialized():
        return ray
    # Keep the driver quiet: worker logs and Ray Data's progress lines would flood a notebook.
    kwargs.setdefault("log_to_driver", False)
    kwargs.setdefault("configure_logging", True)
    kwargs.setdefault("logging_level", "warning")
    if address is not None:
        ray.init(address=address, **kwargs)
        return ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, loopback-only Ray for one user
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, object_store_memory=object_store_bytes, **kwargs)
            return ray
        except Exception as err:  # Ray raises a bare Exception when its node misses its start-up deadline
            if "timed out during startup" not in str(err) or attempt == START_ATTEMPTS:
                raise
            # On a loaded machine the raylet can give up (a fixed 30 s in Ray) just before its agents are ready.
            # Clean up what this attempt started and try again.
            ray.shutdown()
            time.sleep(2 * attempt)
    return ray  # pragma: no cover - the loop returns or raises


def stop() -> None:
    """Shut Ray down in this process (a local Ray stops with it; a cluster keeps running)."""
    ray = ray_module()
    if ray.is_initialized():
        ray.shutdown()
