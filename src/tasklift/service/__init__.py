"""The tasklift service: REST API (FastAPI) over the same engine the embedded mode runs."""
