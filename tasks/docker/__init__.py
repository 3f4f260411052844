"""Docker tasks: health checks and configuration export (the client lives in connectors.docker)."""
