"""The job runners: what runs a job's function, and the pipe and batch formats that reach it.

Core (importable by backends): :mod:`~tasklift.runner.execute` (run one attempt, its outcome),
:mod:`~tasklift.runner.loader` (work functions from source archives),
:mod:`~tasklift.runner.capture` (a local worker's output), :mod:`~tasklift.runner.protocol`
(the local backend's pipe messages, both ends), :mod:`~tasklift.runner.batch` (what a remote
runner is handed). Entry points (processes of their own, started by name):
:mod:`~tasklift.runner.worker` (the local worker), :mod:`~tasklift.runner.remote` (the runner of
Dask and Slurm jobs, reporting over HTTP), ``python -m tasklift.runner`` (their command line).
"""
