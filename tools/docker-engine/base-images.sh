#!/bin/bash
# Offline stand-ins for the two images docker-compose.yml builds on, loaded into the engine of engine.sh:
#   python:3.11-slim  Debian bookworm minbase (debootstrap from the machine's apt mirror) + Debian's python3 3.11,
#                     a venv at /usr/local (so `python`, `pip` and a plain `pip install` behave as in the official
#                     image), and an offline package index: the wheels of $WHEELS at /wheels, /etc/pip.conf no-index.
#   postgres:15       the same rootfs + Debian's postgresql-15 + postgres-entrypoint.sh (the official image's env
#                     contract: POSTGRES_USER/PASSWORD/DB, PGDATA).
# Usage: WHEELS=DIR base-images.sh [python] [postgres]       (make WHEELS with wheels.sh)
# The root filesystems are built once (2-3 minutes) into DOCKERLAB_CACHE and reused; only the import runs again.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
D=${DOCKERLAB_DIR:-/var/tmp/cmglab-docker}
C=${DOCKERLAB_CACHE:-/var/tmp/cmglab-docker-cache}
export DOCKER_HOST=unix://$D/docker.sock
mkdir -p "$C"
exec 9>"$C/.lock"; flock 9   # two harnesses building the same rootfs at once would corrupt it
MIRROR=$( (grep -hoE "^(URIs:|deb) +https?://[^ ]+" /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true) \
  | head -1 | awk '{print $2}')
R=$C/rootfs-python
P=$C/rootfs-postgres

in_chroot() {  # run apt in a rootfs, with the machine's resolver and /proc only for the duration
  local root=$1; shift
  cp /etc/resolv.conf "$root/etc/resolv.conf"; mount -t proc proc "$root/proc"
  local rc=0; chroot "$root" /bin/bash -c "$*" || rc=$?
  umount "$root/proc"; : > "$root/etc/resolv.conf"
  return $rc
}

python_rootfs() {
  [ -f "$R/.complete" ] && return 0
  rm -rf "$R"
  echo "debootstrap bookworm (minbase) into $R ..."
  debootstrap --variant=minbase bookworm "$R" "${MIRROR:-http://deb.debian.org/debian}" > "$C/debootstrap.log"
  in_chroot "$R" 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q \
    --no-install-recommends python3 python3-pip python3-venv ca-certificates netbase tzdata' > "$C/python.log"
  chroot "$R" python3 -m venv /usr/local
  rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb
  touch "$R/.complete"   # only a finished rootfs is reused; a half-built one is built again
}

postgres_rootfs() {
  [ -f "$P/.complete" ] && return 0
  python_rootfs
  rm -rf "$P"; cp -a "$R" "$P"; rm -f "$P/.complete"
  rm -rf "$P/wheels" "$P/etc/pip.conf" "$P/usr/local/pyvenv.cfg" "$P"/usr/local/bin/* "$P/usr/local/lib/python3.11"
  in_chroot "$P" 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q \
    --no-install-recommends postgresql-15 postgresql-client-15 && pg_dropcluster 15 main' > "$C/postgres.log"
  rm -rf "$P"/var/lib/apt/lists/* "$P"/var/cache/apt/*.bin "$P"/var/cache/apt/archives/*.deb
  touch "$P/.complete"
}

for what in "${@:-python}"; do
  case $what in
  python)
    python_rootfs
    rm -rf "$R/wheels"; mkdir -p "$R/wheels"; cp "${WHEELS:?WHEELS=DIR of wheels (wheels.sh)}"/*.whl "$R/wheels/"
    printf '[global]\nno-index = true\nfind-links = /wheels\n' > "$R/etc/pip.conf"
    tar -C "$R" --exclude=./.complete -c . | docker import \
      --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - python:3.11-slim > /dev/null
    docker run --rm python:3.11-slim python --version ;;
  postgres)
    postgres_rootfs
    install -m 755 "$HERE/postgres-entrypoint.sh" "$P/usr/local/bin/docker-entrypoint.sh"
    tar -C "$P" --exclude=./.complete -c . | docker import \
      --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'ENV PGDATA=/var/lib/postgresql/data' \
      --change 'VOLUME /var/lib/postgresql/data' --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
      --change 'EXPOSE 5432' --change 'CMD ["postgres"]' - postgres:15 > /dev/null
    echo "postgres:15 loaded" ;;
  *) echo "unknown image: $what (python|postgres)" >&2; exit 2 ;;
  esac
done
