"""Release: MLflow registry (task ``register``), off-policy evaluation and promotion gates (task ``gate``)."""
