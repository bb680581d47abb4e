"""recloop models: PyTorch models behind two contracts (``models.base``): ``Retriever`` (fit on
interactions / score / recommend / embeddings / save / load) and ``Ranker`` (fit on a labelled
frame / predict_proba / save / load)."""
