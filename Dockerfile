# syntax=docker/dockerfile:1
# Two stages: pdqhash ships only a source distribution (a C++/Cython extension), so the builder
# compiles every wheel, and the runtime image installs them offline, with no compiler in it.
# Extras to install: s3, ssh, video, postgres, prescreen (NudeNet on CPU), gpu (torch; use a CUDA base image).
# tests/deploy/test_docker_image.py runs the RUN steps below outside Docker; keep each pip step a RUN of
# its own.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=s3,ssh,video,postgres
# The official Python images carry Python's headers; only the compiler is missing.
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY horde_scanner ./horde_scanner
COPY local_gpu ./local_gpu
# constraints.txt keeps torch (extra gpu) on its pinned build instead of GBs of CUDA wheels.
RUN pip wheel --wheel-dir /wheels -c constraints.txt ".[${EXTRAS}]" \
    && cp constraints.txt /wheels/constraints.txt

FROM ${PYTHON_IMAGE}
ARG EXTRAS=s3,ssh,video,postgres
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --only-binary=:all: --find-links /wheels \
    -c /wheels/constraints.txt \
    "horde-scanner[${EXTRAS}]"
# A fixed uid, so a bind-mounted volume can be given to it: chown -R 10001:10001 volumes/horde-scanner
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /data scanner \
    && mkdir /data && chown scanner:scanner /data
USER 10001:10001
WORKDIR /data
ENV HORDE_SCANNER_STORE__PATH=/data/horde-scanner.db \
    HORDE_SCANNER_SERVER__HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 14051
VOLUME ["/data"]
ENTRYPOINT ["horde-scanner"]
CMD ["serve"]
