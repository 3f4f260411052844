"""PostgreSQL tasks: health check, backup and restore (the connector lives in
connectors.postgres)."""
