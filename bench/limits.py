"""Process limits for 1,000 open connections: each benchmark process raises its own."""

from __future__ import annotations

import resource


def raise_open_files(wanted: int = 65_536) -> None:
    """Raise RLIMIT_NOFILE's soft limit towards `wanted` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
