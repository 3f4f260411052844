"""Plain Python clients below the tasks (no Prefect): transports, stores, streams and the
PostgreSQL, Redis, Docker and Kubernetes connectors."""
