"""Datasets: the registry and loaders, official files read without running code from
them, and the folders a server may read images from."""
