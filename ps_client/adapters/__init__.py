"""Framework adapters over the numpy client. Each needs its framework's extra installed,
e.g. ``pip install 'monolith-ps[torch]'`` for :mod:`ps_client.adapters.torch`."""
