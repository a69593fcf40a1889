"""Spawns engine instances as process groups, captures their logs, waits for readiness, stops
them without orphans."""
