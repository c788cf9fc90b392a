"""Persistence: ORM models (``models``) and their table handles (``tables``), statements by
subject (``workflows``, ``works``, ``jobs`` with the one job-state writer ``transition``,
``results``, ``archives``, ``dataflow``), driver SQL for hot paths (``hot``), engine and
session set-up (``session``) and Alembic migrations."""
