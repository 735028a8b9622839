"""L1: the embedded SmolLM2 model and model loading."""
