"""What the client and the sync agent share to talk to PS servers: channels and TLS,
RPC error text, and the typed view of what servers say about themselves."""
