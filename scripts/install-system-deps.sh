#!/usr/bin/env bash
# Install the system components the tests talk to, when missing (Debian 12, as root):
# a Docker engine, PostgreSQL and Redis server binaries, zstd, debootstrap, Chromium, and
# Prometheus and Alertmanager (+ amtool; the alert receiver's tests run the real one).
# Idempotent and quiet when everything is already there. Services are NOT started here:
# the test fixtures start and stop their own.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v chromium >/dev/null || need+=(chromium)
command -v zstd >/dev/null || need+=(zstd)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-check-rdb >/dev/null || need+=(redis-tools)  # the Redis backup tests check RDBs
[ -x /bin/busybox ] || need+=(busybox-static)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
command -v psql >/dev/null || need+=(postgresql-client)
[ -x /usr/bin/prometheus ] || need+=(prometheus)  # the incident tests query a real Prometheus
{ command -v prometheus-alertmanager && command -v amtool; } >/dev/null || need+=(prometheus-alertmanager)

if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: need root (or sudo) to apt-get install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
echo "system components present: dockerd $(dockerd --version | awk '{print $3}' | tr -d ,)," \
     "postgres $(ls /usr/lib/postgresql/), redis $(redis-server --version | awk '{print $3}')"
