"""Servers servecheck starts itself: real inference servers hosting a local HF checkpoint."""
