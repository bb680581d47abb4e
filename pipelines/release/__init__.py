"""Release: ``register`` (task ``register``; MLflow itself is ``registry``), ``gate`` (task ``gate``: promotion gates), off-policy evaluation (``ope``, ``bundle_ope``)."""
