"""Feature tables (DuckDB), the Feast store and the Redis online read path (task ``features``)."""
