"""Judges of generated images: scores that say how well an image matches its prompt (rerankers, metrics)."""
