"""Reproductions of the Monolith paper's experiments on a local monolith-ps cluster."""
