"""L0: hashing, redaction, output folders (atomic writes) and provenance; imports nothing above it."""
