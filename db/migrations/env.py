"""Alembic environment: run on the connection that db.session hands over."""
from alembic import context

from db.models import Base
from db.session import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
