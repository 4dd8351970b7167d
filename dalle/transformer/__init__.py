"""Text-to-image transformers: DALL·E Mini / Mega's encoder–decoder (`bart`), its weights and its tokenizer."""
