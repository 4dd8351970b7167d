"""Training data: synthetic captioned shapes, caption folders, WebDataset shards, and their DataModules."""
