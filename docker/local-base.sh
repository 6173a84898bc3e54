#!/usr/bin/env bash
# Prints the base image docker/Dockerfile should build on, making it first when needed:
#   python:3.11-slim             when present or pullable (Docker Hub reachable): the default
#   local/python:3.11-bookworm   otherwise, built here from Debian's own packages (debootstrap
#                                from the machine's Debian mirror) on local/debian:bookworm
# The local bases trust the certificate authorities this machine trusts, so pip and apt work
# inside builds as they do here. Idempotent (seconds once built; about 2 minutes the first time,
# as root, with debootstrap installed: docker/engine.sh installs it).
#   make image   uses it;   BASE=... make image   skips it
set -euo pipefail
if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
  echo python:3.11-slim
  exit 0
fi
echo "Docker Hub unreachable: building on local/python:3.11-bookworm (Debian packages)" >&2
if ! docker image inspect local/debian:bookworm >/dev/null 2>&1; then
  mirror=$(grep -rhoE "https?://[^ ]*debian\.org/debian/?" /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | sed -n 1p || true)
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" "${mirror:?no Debian mirror in the apt sources}" >/dev/null
  mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  tar -C "$root" -c . | docker import \
    -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    - local/debian:bookworm >/dev/null
fi
if ! docker image inspect local/python:3.11-bookworm >/dev/null 2>&1; then
  # python3 in a venv at /opt/python, first on PATH: `pip install` works as in python:3.11-slim.
  docker build -q -t local/python:3.11-bookworm - >/dev/null <<'DOCKERFILE'
FROM local/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/python && /opt/python/bin/pip install -q --upgrade pip
ENV PATH=/opt/python/bin:$PATH LANG=C.UTF-8
CMD ["python3"]
DOCKERFILE
fi
echo local/python:3.11-bookworm
