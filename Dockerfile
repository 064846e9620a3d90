# syntax=docker/dockerfile:1
# HCS image: one package, `hcs` as the entrypoint; the manifests pick the subcommand in `args`.
# Build: make image (docker or podman). Lint: make lint (hadolint).

# Stage 1: the hcs wheel and every dependency's wheel (the NVML extra for the NVIDIA agent).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY hcs ./hcs
COPY hcs_cli ./hcs_cli
COPY extender ./extender
COPY webhook ./webhook
COPY serving ./serving
COPY certs ./certs
COPY cluster ./cluster
COPY node ./node
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[nvml]"

# Stage 2: the runtime. Nothing is written to the root filesystem at run time (the manifests
# set readOnlyRootFilesystem); the probes run `python -c`, which this base provides.
FROM python:3.11-slim
# The one wheel built above from this tree (its version is hcs/__init__.py's): nothing to pin.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "hcs[nvml]"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["hcs"]
CMD ["--help"]
