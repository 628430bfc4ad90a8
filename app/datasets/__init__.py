"""Datasets: the five known datasets, ingest from torchvision's raw files, verified cached loads, grids."""
