"""The storage contract, run against every backend: memory, SQLite, PostgreSQL, MariaDB."""
