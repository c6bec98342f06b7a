"""Snapshots of a parameter server: atomic, checksummed ``.npy`` files plus a JSON manifest.

``format`` defines the on-disk layout and checksums, ``store`` writes snapshots, picks
the newest consistent chain and applies retention, ``merge`` folds a chain into one
state, ``export`` writes serving bundles, ``inspect`` describes a snapshot directory.
This package imports nothing heavy so that ``mps --help`` stays fast.
"""
