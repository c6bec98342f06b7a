"""Runnable examples of monolith-ps; run them from the repository root."""
