"""MovieLens real-time demo: a factorization machine trained online through the PS.

``data`` turns ml-latest-small into a time-ordered stream of sparse feature IDs,
``model`` is the numpy factorization machine, ``metrics`` the AUC and log loss,
``stream`` the window-by-window train-then-serve loop, and ``demo`` the
``make demo`` entry point that runs it against a local cluster.
"""
