# syntax=docker/dockerfile:1
# One image, three entry points: `mps server --role training|serving` and `mps sync-agent`.
# Build: docker build --build-arg VERSION=0.1.0 -t monolith-ps:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# Stage 1: build the wheel of this repository (no dependencies).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY proto ./proto
COPY monolith_ps ./monolith_ps
COPY ps_server ./ps_server
COPY ps_client ./ps_client
COPY sync_agent ./sync_agent
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && cp constraints.txt /wheels/

# Stage 2: the wheel and its runtime dependencies (the cluster extra, at the versions
# constraints.txt pins) in a virtualenv; no compilers, no sources.
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="monolith-ps" \
      org.opencontainers.image.description="Parameter-server cluster for the embedding tables of real-time recommendation models: training and serving servers and the sync agent." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/monolith-ps/monolith-ps" \
      org.opencontainers.image.url="https://github.com/monolith-ps/monolith-ps" \
      org.opencontainers.image.documentation="https://github.com/monolith-ps/monolith-ps/tree/main/docs"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/monolith-ps/bin:$PATH \
    NUMBA_CACHE_DIR=/var/cache/monolith-ps/numba \
    MALLOC_MMAP_THRESHOLD_=33554432 \
    MALLOC_TRIM_THRESHOLD_=67108864
RUN groupadd --system --gid 10001 mps \
    && useradd --system --uid 10001 --gid mps --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mps \
    && mkdir -p /var/cache/monolith-ps/numba /var/lib/monolith-ps/snapshots \
    && chown -R 10001:10001 /var/cache/monolith-ps /var/lib/monolith-ps
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/monolith-ps \
    && for wheel in /wheels/*.whl; do \
         /opt/monolith-ps/bin/pip install --constraint /wheels/constraints.txt "${wheel}[cluster]"; \
       done
# Compile every kernel now into NUMBA_CACHE_DIR, for a CPU model every node has
# (generic x86-64 / aarch64), so the cache matches on any node: the chart's init container
# copies it into the pod's writable cache volume and servers start without compiling.
ENV NUMBA_CPU_NAME=generic
USER 10001:10001
RUN mps warmup
WORKDIR /var/lib/monolith-ps
# gRPC API and Prometheus metrics; the orchestrator probes gRPC health (no HEALTHCHECK here).
EXPOSE 50051 9090
ENTRYPOINT ["mps"]
CMD ["--help"]
