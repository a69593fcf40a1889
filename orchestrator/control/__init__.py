"""The control loop: the one task that owns cluster state (events in, effects out)."""
