"""recloop models: PyTorch recommenders behind one interface (fit / recommend / score / save / load)."""
