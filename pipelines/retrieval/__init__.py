"""Retrieval: train the candidate models (tasks ``train_*``), build the FAISS index (``build_index``), forward evaluation (``evaluate``)."""
