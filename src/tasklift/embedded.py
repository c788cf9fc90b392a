"""The composition root of ``service="local"``: the engine the user's process runs, built with
the bus named in the settings, the backends built by name from the settings, and a job API
served from this process when a remote backend (Dask, Slurm) first needs one.

``tasklift.service.app`` is the other composition root (the server's). Nothing below this
module picks a bus, a backend class or a job API by name: they are handed in from here.
"""

from __future__ import annotations

from tasklift.backends.registry import backend_from_settings
from tasklift.bus.registry import bus_from_url
from tasklift.engine.backend_pool import BackendFactory
from tasklift.engine.engine import Engine
from tasklift.service.job_api import JobAPIServer
from tasklift.settings import Settings

__all__ = ["build_engine", "start_job_api"]


def start_job_api(engine: Engine) -> JobAPIServer:
    """Serve the job routes of ``engine`` from this process, on an ephemeral port."""
    api = JobAPIServer(engine, engine.settings)
    api.start()
    return api


def build_engine(
    settings: Settings,
    *,
    backends: BackendFactory | None = None,
    auto_upgrade: bool = True,
    resume: bool = False,
) -> Engine:
    """An engine for ``settings``: the settings' bus, backends by name (or ``backends``), and
    its own job API for remote runners. A resuming engine starts when :meth:`Engine.start`
    is called."""
    return Engine(
        settings,
        bus=bus_from_url(settings.bus),
        backends=backends or (lambda name: backend_from_settings(name, settings)),
        job_api=start_job_api,
        auto_upgrade=auto_upgrade,
        resume=resume,
    )
