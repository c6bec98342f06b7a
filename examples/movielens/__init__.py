"""MovieLens real-time demo: a factorization machine trained online through the PS.

``releases`` finds and reads a MovieLens release in any layout GroupLens ships, ``data``
turns it into a time-ordered stream of sparse feature IDs, ``model`` is the numpy
factorization machine, ``metrics`` the AUC and log loss, ``stream`` the window-by-window
train-then-serve loop, ``report`` the demo's table and plot, and ``demo`` the
``make demo`` entry point that runs it against a local cluster.
"""
