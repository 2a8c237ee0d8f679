# The platform with Debian's docker.io already installed, for scenarios that
# need a Docker engine but do not test installing one (nvidia_container_toolkit):
# docker_engine then only renders daemon.json. Built FROM envkit-molecule/target:1.
ARG BASE_IMAGE=envkit-molecule/target:1
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker.io \
 && rm -rf /var/lib/apt/lists/*
