"""Text to image: discrete image tokenizers, transformers over text and image tokens, and what judges their pictures.

    vae/          image tokenizers: the dVAE (ours and OpenAI's), the VQGAN of DALL·E Mini / Mega
    transformer/  the paper's DALL·E, DALL·E Mini / Mega's encoder-decoder, sampling, tokenizers
    data/         synthetic shapes, caption folders, WebDataset shards, their DataModules
    judges/       attribute classifier, rerankers (ours, CLIP), prompt-adherence evaluation
    pipeline.py   load_pipeline, generate_images, save_images; pretrained.py: DALL·E Mini / Mega
    __main__.py   `python -m dalle <command>`

Imports flow down that list's layers (docs/architecture.md).
"""

from .moved import MOVED_MODULES, install_moved_modules

__all__ = ["MOVED_MODULES"]

install_moved_modules()  # release 0.1's flat module paths, for one release (dalle/moved.py)
