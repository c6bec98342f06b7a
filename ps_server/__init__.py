"""The parameter server: embedding tables (``ps_server.table``), optimizers and initializers
(``ps_server.optim``), and the gRPC services built on them."""
