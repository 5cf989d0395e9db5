"""OmegaConf resolvers our configs use, registered when the charrnn package is imported.

Registered on import (not in an entry point) because jobs of a parallel launcher resolve their
config in worker processes that never run the entry point's module code.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity: respects taskset, cgroups, SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launcher_jobs() -> int | None:
    """hydra.launcher.n_jobs of the running Hydra app (joblib launcher), else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)


def cores_per_job(n_jobs: int | None = None) -> int | None:
    """The machine's cores shared out among the jobs a launcher runs at once, at least one each.

    n_jobs defaults to the running launcher's (hydra.launcher.n_jobs) and follows joblib: -1 means
    one job per core, -2 all cores but one, and so on. None when there is no such launcher (and
    outside a Hydra app), i.e. torch's own default: all cores.
    """
    if n_jobs is None:
        n_jobs = launcher_jobs()
    if n_jobs is None:
        return None
    cores = machine_cores()
    jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, cores // jobs)


def run_name(override_dirname: str, limit: int = 200) -> str:
    """A job's override_dirname made safe as a directory name (and readable as a TensorBoard run).

    Numbers keep 4 significant digits (Optuna suggests values like 0.0013922830138102383) and the
    name stops at `limit` characters, at an item boundary when it can: file names have at most 255
    bytes. The job number in front keeps names unique.
    """
    items = []
    for item in override_dirname.split(","):
        key, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and len(value) > 8 and not value.lstrip("-").isdigit():
            value = f"{number:.4g}"
        items.append(key + sep + value)
    name = ",".join(items)
    if len(name) <= limit:
        return name
    cut = name.rfind(",", 0, limit)
    return name[: cut if cut > 0 else limit]


OmegaConf.register_new_resolver("cores_per_job", cores_per_job, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
