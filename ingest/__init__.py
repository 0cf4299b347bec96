"""Files -> sections -> chunks -> embeddings -> the store."""
