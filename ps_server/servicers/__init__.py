"""The ParameterServer servicers: one class per role over a shared ``ShardState``."""

from ps_server.servicers.base import BaseServicer
from ps_server.servicers.serving import ServingServicer
from ps_server.servicers.training import TrainingServicer

__all__ = ["BaseServicer", "ServingServicer", "TrainingServicer"]
