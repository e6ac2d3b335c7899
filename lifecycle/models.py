"""Public-schema models of the lifecycle app (the backup registry)."""
