"""The day's logs: simulate a world, import real logs, validate a day (task ``validate``), daily stats (task ``stats``)."""
