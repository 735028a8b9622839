"""L2: preference pairs, the one file-level split, the refusal set."""
