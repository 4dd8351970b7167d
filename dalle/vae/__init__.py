"""Image tokenizers: the VQGAN of DALL·E Mini / Mega (`vqgan`) and its weights."""
