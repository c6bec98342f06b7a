"""Snapshots of a parameter server: atomic, checksummed ``.npy`` files plus a JSON manifest.

``format`` defines the on-disk layout and checksums, ``store`` writes snapshots, picks
the newest consistent chain and applies retention, ``merge`` folds a chain into one
state, ``tables`` maps live tables to snapshot sections and back, ``snapshotter`` runs
it all inside a server (restore, schedule, SIGTERM, serving bootstrap), ``bundle``
writes serving bundles, ``inspect`` describes a snapshot directory, ``metrics`` holds the
Prometheus metrics. ``cli`` and ``bundle_cli`` are ``mps snapshot`` and ``mps bundle``.
This package imports nothing heavy so that ``mps --help`` stays fast.
"""
