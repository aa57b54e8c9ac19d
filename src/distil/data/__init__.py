"""The data half of the platform: GLUE tasks, download, tokenization, OFRecord I/O."""
