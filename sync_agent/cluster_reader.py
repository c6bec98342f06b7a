"""Reading the cluster at the start of a round: who discovery lists, which of them report
SERVING, what each training shard says about itself and what each serving replica has
applied, checked as one topology."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from monolith_ps.health import SERVICE_NAME, STARTUP_SERVICE
from monolith_ps.transport.cluster import (
    consistent_shards,
    shard_info_from_proto,
    sync_state_from_proto,
)
from monolith_ps.transport.rpc_errors import error_text
from monolith_ps.v1 import ps_pb2
from sync_agent.channels import ChannelPool
from sync_agent.cursors import ReplicaState, TrainingShard
from sync_agent.discovery.base import Discovery, Endpoint, Role

__all__ = ["ClusterReader", "ClusterView"]

RunParallel = Callable[[Sequence, Callable], list[tuple]]


@dataclasses.dataclass
class ClusterView:
    """The cluster as it answered: usable training shards and replicas of this agent's
    partition, every serving name discovery listed, replicas that did not answer, and
    each problem as ``(stage, server, message)``."""

    training: list[TrainingShard] = dataclasses.field(default_factory=list)
    replicas: list[ReplicaState] = dataclasses.field(default_factory=list)
    serving_names: set[str] = dataclasses.field(default_factory=set)
    silent_replicas: list[str] = dataclasses.field(default_factory=list)
    problems: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ClusterReader:
    """Asks discovery, then every server, in parallel on the agent's pool."""

    discovery: Discovery
    channels: ChannelPool
    run_parallel: RunParallel
    rpc_timeout: float
    partition: tuple[int, int]

    def read(self) -> ClusterView:
        """Training shards and serving replicas that answered, validated as a topology."""
        view = ClusterView()
        try:
            training_eps = self.discovery.endpoints(Role.TRAINING)
            serving_eps = self.discovery.endpoints(Role.SERVING)
        except Exception as exc:  # a discovery source may fail in ways we cannot list
            view.problems.append(("discover", "discovery", error_text(exc)))
            return view
        view.serving_names = {e.name for e in serving_eps}
        self.channels.retain(e.address for e in (*training_eps, *serving_eps))
        described = self.run_parallel(training_eps, self._describe)
        states = self.run_parallel(serving_eps, self._sync_state)
        training: list[TrainingShard] = []
        for endpoint, result in described:
            if isinstance(result, str):
                view.problems.append(("describe", endpoint.name, result))
            else:
                training.append(result)
        for endpoint, result in states:
            if isinstance(result, str):
                view.problems.append(("sync_state", endpoint.name, result))
                view.silent_replicas.append(endpoint.name)
            elif result.shard_index % self.partition[1] == self.partition[0]:
                view.replicas.append(result)
        # Keep the shards of the most common shard count, each index claimed once.
        view.training, refused = consistent_shards(training, lambda shard: shard.info)
        for shard, problem in refused:
            view.problems.append(("topology", shard.endpoint.name, problem))
        return view

    def read_replicas(self) -> list[ReplicaState]:
        """The serving replicas of this agent's partition that answered (no training call):
        the cheap per-second look for replicas without state."""
        try:
            serving_eps = self.discovery.endpoints(Role.SERVING)
        except Exception:  # the next round reports discovery failures
            return []
        return [
            state
            for _, state in self.run_parallel(serving_eps, self._sync_state)
            if not isinstance(state, str)
            and state.shard_index % self.partition[1] == self.partition[0]
        ]

    def _not_ready(self, endpoint: Endpoint, service: str = SERVICE_NAME) -> str:
        """Why a server cannot take part in a round now ('' when ``service`` is SERVING).

        A training server restoring a snapshot already answers RPCs, from tables not yet
        loaded; syncing from it then would wipe rows on serving until the next round. A
        serving server takes part once started (``STARTUP_SERVICE``): it becomes ready
        only after the agent has given it a state from every training shard.
        """
        try:
            reply = self.channels.health(endpoint.address).Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.rpc_timeout,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and service != SERVICE_NAME:
                return self._not_ready(endpoint)  # a server older than the startup health
            return error_text(exc)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return f"not ready: health {status}"
        return ""

    def _ask_ready(
        self, endpoint: Endpoint, method: str, request: Message, service: str = SERVICE_NAME
    ) -> Any | str:
        """The reply of RPC ``method`` from a server whose health ``service`` is SERVING, or
        why there is none (a str). The reply is the method's response message; the
        generated stub does not type its methods, so neither can this."""
        if problem := self._not_ready(endpoint, service):
            return problem
        try:
            call = getattr(self.channels.stub(endpoint.address), method)
            return call(request, timeout=self.rpc_timeout)
        except grpc.RpcError as exc:
            return error_text(exc)

    def _describe(self, endpoint: Endpoint) -> TrainingShard | str:
        response = self._ask_ready(endpoint, "DescribeTables", ps_pb2.DescribeTablesRequest())
        if isinstance(response, str):
            return response
        if response.role != ps_pb2.ROLE_TRAINING:
            return f"discovered as training but reports role {ps_pb2.Role.Name(response.role)}"
        return TrainingShard(endpoint, shard_info_from_proto(endpoint.name, response))

    def _sync_state(self, endpoint: Endpoint) -> ReplicaState | str:
        response = self._ask_ready(
            endpoint, "GetSyncState", ps_pb2.GetSyncStateRequest(), STARTUP_SERVICE
        )
        if isinstance(response, str):
            return response
        if response.num_shards < 1 or response.shard_index >= response.num_shards:
            return f"reports shard {response.shard_index} of {response.num_shards}"
        return ReplicaState(endpoint, sync_state_from_proto(endpoint.name, response))
