# envkit PyTorch image: variants cpu, cuda and cuda-devel from this one file.
#
# Every version comes from a row of envkit/data/matrix.yaml as a build argument;
# `envkit images build pytorch --variant cpu` passes them (README: Images).
# Build context: the repository root. Needs BuildKit (RUN --mount, secrets).
#
# Stages: wheelhouse-* (where wheels come from) -> os (python + tini) ->
# builder (dependency venv, envkit wheel) -> runtime-<variant> -> runtime
# (the image) -> test (doctor + a tiny bench, run inside the build).

# Debian/Ubuntu base: the local debootstrap base for cpu, nvidia/cuda:*-base-* for
# cuda (the torch wheels bring cuBLAS/cuDNN/NCCL, so -runtime would ship them twice),
# nvidia/cuda:*-devel-* for cuda-devel.
ARG BASE_IMAGE
# cpu | cuda | cuda-devel: selects the runtime-<variant> stage below.
ARG VARIANT=cpu
# none: wheels come from the index; context: ./wheelhouse of the build context.
ARG WHEELHOUSE=none

# -- Where the wheels come from ------------------------------------------------
# With buildx, `--build-context wheelhouse=DIR` replaces the `wheelhouse` stage
# outright; the classic BuildKit client (docker 20.10) has no named contexts, so
# WHEELHOUSE=context copies ./wheelhouse into a stage that never reaches the image.
FROM scratch AS wheelhouse-none
FROM scratch AS wheelhouse-context
COPY wheelhouse/ /
# hadolint ignore=DL3006
FROM wheelhouse-${WHEELHOUSE} AS wheelhouse

# -- Python and tini, shared by the builder and the runtime --------------------
FROM ${BASE_IMAGE} AS os
ARG PYTHON_VERSION
ARG DEBIAN_FRONTEND=noninteractive
ENV LANG=C.UTF-8
# apt's lists and .debs live in cache mounts: they never enter a layer.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update \
 && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}" tini ca-certificates \
 && rm -rf /var/log/apt /var/log/dpkg.log /var/cache/debconf/*-old

# -- Builder: the dependency venv and the envkit wheel ---------------------------
FROM os AS builder
ARG PYTHON_VERSION
ARG DEBIAN_FRONTEND=noninteractive
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update \
 && apt-get install -y --no-install-recommends "python${PYTHON_VERSION}-venv" \
 && "python${PYTHON_VERSION}" -m venv /opt/venv

# Dependencies only: this layer depends on pyproject.toml and the framework pin,
# not on envkit's code, so a code-only change rebuilds none of it.
ARG FRAMEWORK_PACKAGE
ARG FRAMEWORK_VERSION
ARG WHEEL_INDEX
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=pip_cert \
    --mount=type=secret,id=pip_conf \
    --mount=type=bind,from=wheelhouse,target=/wheels \
    --mount=type=bind,source=pyproject.toml,target=/ctx/pyproject.toml \
    --mount=type=bind,source=Dockerfiles/requirements.py,target=/ctx/requirements.py \
    --mount=type=bind,source=Dockerfiles/pip.sh,target=/ctx/pip.sh \
    /opt/venv/bin/python /ctx/requirements.py /ctx/pyproject.toml /tmp/requirements.txt \
      --extra train "${FRAMEWORK_PACKAGE}==${FRAMEWORK_VERSION}" \
 && sh /ctx/pip.sh install --requirement /tmp/requirements.txt \
 && rm /tmp/requirements.txt

FROM builder AS envkit-wheel
COPY pyproject.toml README.md /src/
COPY envkit /src/envkit
COPY training /src/training
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=pip_cert \
    --mount=type=secret,id=pip_conf \
    --mount=type=bind,from=wheelhouse,target=/wheels \
    --mount=type=bind,source=Dockerfiles/pip.sh,target=/ctx/pip.sh \
    sh /ctx/pip.sh wheel --no-deps --wheel-dir /dist /src

# -- Runtime: a non-root user, the venv, tini + the /dev/shm check ---------------
FROM os AS runtime-base
ARG ENVKIT_UID=1000
ARG ENVKIT_GID=1000
# Ubuntu 24.04 bases ship a user `ubuntu` with uid 1000: it gives way to envkit.
RUN if getent passwd ubuntu >/dev/null; then userdel --remove ubuntu; fi \
 && groupadd --gid "${ENVKIT_GID}" envkit \
 && useradd --uid "${ENVKIT_UID}" --gid "${ENVKIT_GID}" --create-home --shell /bin/bash envkit \
 && install -d -o "${ENVKIT_UID}" -g "${ENVKIT_GID}" /workspace

FROM runtime-base AS runtime-cpu

FROM runtime-base AS runtime-cuda
# nvidia-container-toolkit reads these: all GPUs, the compute and NVML libraries.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM runtime-cuda AS runtime-cuda-devel
ARG PYTHON_VERSION
ARG DEBIAN_FRONTEND=noninteractive
# Compilers and headers for building CUDA/C++ extensions (nvcc comes with the -devel base).
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update \
 && apt-get install -y --no-install-recommends build-essential ninja-build git "python${PYTHON_VERSION}-dev" \
 && rm -rf /var/log/apt /var/log/dpkg.log
ENV CUDA_HOME=/usr/local/cuda

# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
ARG ENVKIT_UID=1000
ARG ENVKIT_GID=1000
# The user owns the venv, as in the Jupyter docker-stacks, so `pip install` works.
COPY --from=builder --chown=${ENVKIT_UID}:${ENVKIT_GID} /opt/venv /opt/venv
COPY --chmod=0755 Dockerfiles/entrypoint.sh /usr/local/bin/envkit-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
USER ${ENVKIT_UID}:${ENVKIT_GID}
WORKDIR /workspace
# envkit and training last: a code-only change rebuilds this layer alone.
RUN --mount=type=bind,from=envkit-wheel,source=/dist,target=/dist \
    pip install --no-deps --no-index --no-cache-dir /dist/envkit-*.whl
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/envkit-entrypoint"]
CMD ["bash"]
# doctor exits 0 when the stack is usable, 1 when a check fails.
HEALTHCHECK --interval=10m --timeout=120s --start-period=120s --retries=2 CMD ["envkit", "doctor"]

# Labels last: build-specific values (revision, created) change no layer.
ARG FRAMEWORK
ARG FRAMEWORK_VERSION
ARG VARIANT
ARG CUDA_VERSION=none
ARG PYTHON_VERSION
ARG SOURCE=unknown
ARG REVISION=unknown
ARG ENVKIT_VERSION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="envkit ${FRAMEWORK} ${FRAMEWORK_VERSION} (${VARIANT})" \
      org.opencontainers.image.description="PyTorch with envkit (doctor, bench) and its training package" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${ENVKIT_VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.envkit.framework="${FRAMEWORK}" \
      io.envkit.framework.version="${FRAMEWORK_VERSION}" \
      io.envkit.variant="${VARIANT}" \
      io.envkit.cuda="${CUDA_VERSION}" \
      io.envkit.python="${PYTHON_VERSION}"

# -- test: proves the image inside the build (`--target test`) -------------------
# doctor must call the stack usable (exit 0) and a tiny matmul must be correct.
FROM runtime AS test
RUN envkit doctor \
 && envkit bench matmul --backend torch --dtype fp32 --m 512 --warmup 0.05 --min-time 0.1 --out /tmp/bench.json
