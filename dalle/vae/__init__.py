"""Image tokenizers: the dVAE (`dvae`: ours and OpenAI's architecture; `module`: its training; `convert_openai`) and
the VQGAN of DALL·E Mini / Mega (`vqgan`, `vqgan_weights`)."""
