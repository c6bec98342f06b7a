"""The gRPC health service names every server reports, shared by servers, agent and tests.

- ``""`` and ``SERVICE_NAME``: ready, i.e. able to answer correctly (a serving server:
  it holds a state from every training shard). The readiness probe.
- ``STARTUP_SERVICE``: the restore is done; a serving server now accepts deltas, which
  is what the sync agent waits for. The startup probe.
- ``LIVENESS_SERVICE``: the process runs and answers. The liveness probe.
"""

from __future__ import annotations

from monolith_ps.v1 import ps_pb2

__all__ = ["LIVENESS_SERVICE", "SERVICE_NAME", "STARTUP_SERVICE"]

SERVICE_NAME = ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name
STARTUP_SERVICE = "monolith_ps.v1.startup"
LIVENESS_SERVICE = "monolith_ps.v1.liveness"
