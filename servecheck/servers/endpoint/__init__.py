"""The HF Inference Endpoints side: a self-contained handler, its local server, its files."""
