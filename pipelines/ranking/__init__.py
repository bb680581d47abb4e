"""Ranking: labelled impressions, the DLRM ranker and its baseline (task ``train_ranker``), forward evaluation (``evaluate_ranker``)."""
