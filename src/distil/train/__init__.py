"""One training engine for every algorithm: optimizer and schedule, graphs, metrics, the trainer loop."""
