"""recloop serving: the online multi-stage recommendation service."""
