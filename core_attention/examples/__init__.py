"""Tested examples that reuse the core: seq2seq translator, text classifier, GPT-style language model."""
