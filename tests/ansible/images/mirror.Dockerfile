# The tools an air-gapped site's mirror host has: gpg to sign, apt-ftparchive
# and dpkg-deb to build a repository, python3 to serve it over HTTP.
ARG BASE_IMAGE=envkit/debian:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends gnupg apt-utils dpkg-dev python3 \
 && rm -rf /var/lib/apt/lists/*
CMD ["python3", "-m", "http.server", "--directory", "/srv/mirror", "8080"]
