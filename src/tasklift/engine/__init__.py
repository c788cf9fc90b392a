"""The engine: stores workflows, works and jobs, dispatches jobs to backends, records outcomes."""
