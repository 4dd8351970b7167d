"""Text-to-image transformers: the paper's DALL·E (`model`, `module`: its training, `masks`, `tokenizer`), DALL·E Mini /
Mega's encoder–decoder (`bart`, `bart_weights`, `bart_tokenizer`), and what both sample with (`sampling`)."""
