"""Shared foundations: settings, the data contracts, vocabularies, metrics, paths and file formats."""
