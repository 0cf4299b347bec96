"""rag: private document Q&A on your own hardware."""

__version__ = "0.1.0"
