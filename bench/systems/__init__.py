"""One module per benchmarked system, each exposing a :class:`~bench.systems.base.BenchSystem`.

Module names end in ``_sys`` (or are otherwise distinct) so they never shadow the real packages
(``ray``, ``parsl``, ``dask``, ``celery``, ``tasklift``).
"""

SYSTEMS = {
    "processpool": "bench.systems.processpool:ProcessPoolSystem",
    "ray": "bench.systems.ray_sys:RaySystem",
    "parsl": "bench.systems.parsl_sys:ParslSystem",
    "dask": "bench.systems.dask_sys:DaskSystem",
    "celery": "bench.systems.celery_sys:CelerySystem",
    "tasklift": "bench.systems.tasklift_sys:TaskliftSystem",
    "tasklift-server": "bench.systems.tasklift_sys:TaskliftServerSystem",
}
"""Name on the command line -> ``module:class``. Order is the order of the table.
``tasklift-server`` (W6) runs only when named."""
