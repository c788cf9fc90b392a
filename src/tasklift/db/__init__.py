"""Persistence: ORM models, engine/session set-up, queries and Alembic migrations."""
