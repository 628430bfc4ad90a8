"""Alembic environment: migrations run on the connection `Database.migrate` hands over (batch mode for SQLite)."""

from alembic import context

from app.db.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
