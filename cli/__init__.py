"""The opsflow command line (Typer): the top layer, over flows, deployments and the core."""
