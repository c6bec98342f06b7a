"""monolith-ps: a parameter-server cluster for real-time recommendation embeddings."""

__version__ = "0.1.0"
