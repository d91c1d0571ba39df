"""Generated data sets for demos and tests (numpy + PIL, no download)."""
