"""The catalog database: engine and transactions, table declarations, the database clock, migrations.

Records live here (job queue, model catalog, labels, aliases); bytes live in object storage. SQLite by default,
PostgreSQL (psycopg 3) for several machines. Only this package creates engines and connections.
"""
