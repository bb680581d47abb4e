"""Online experiments: A/B analysis and decisions (the ``recloop_ab`` DAG)."""
