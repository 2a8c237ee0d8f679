# The stand-in for NVIDIA's libnvidia-container repository, as an air-gapped
# site's mirror holds it: built and signed (with the mirror's own key) at image
# build time, served over HTTP on 8080.
ARG BASE_IMAGE=envkit/debian:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends gnupg apt-utils dpkg-dev python3 \
 && rm -rf /var/lib/apt/lists/*
COPY mirror/ /mirror-src/
# Space-separated toolkit versions (build-images.sh: the scenarios' old one and the matrix's).
ARG TOOLKIT_VERSIONS
RUN test -n "$TOOLKIT_VERSIONS" && /mirror-src/build-repo.sh /srv/mirror $TOOLKIT_VERSIONS
EXPOSE 8080
CMD ["python3", "-m", "http.server", "--directory", "/srv/mirror", "8080"]
