#!/bin/bash
# A private Docker engine for the compose lab's end-to-end test, on a machine with no Docker daemon and no image
# registry (this project's CI): dockerd with its own containerd inside a network namespace of its own, so it never
# changes the machine's own iptables or routes (they carry the package-registry access).
#   engine.sh start [overlay2|vfs]     then: export DOCKER_HOST=unix://$DOCKERLAB_DIR/docker.sock
#   engine.sh stop                     ends dockerd and containerd, removes the namespace (safe to call twice)
# DOCKERLAB_DIR holds the engine's state (images survive a stop); DOCKERLAB_NETNS names the namespace. Two
# engines with different DIR and NETNS run side by side.
set -euo pipefail
D=${DOCKERLAB_DIR:-/var/tmp/cmglab-docker}
NS=${DOCKERLAB_NETNS:-cmglabdock}

netns_exists() { ip netns list | awk '{print $1}' | grep -qx "$NS"; }

start() {
  local driver=${1:-overlay2}
  mkdir -p "$D/data" "$D/exec" "$D/etc"
  if [ -f "$D/dockerd.pid" ] && kill -0 "$(cat "$D/dockerd.pid")" 2>/dev/null; then echo "engine already running"; return 0; fi
  netns_exists || ip netns add "$NS"
  ip netns exec "$NS" ip link set lo up
  echo '{}' > "$D/etc/daemon.json"   # never read the machine's own /etc/docker/daemon.json
  # `ip netns exec` gives the command a fresh /sys, which hides the cgroup v1 mounts (dockerd then dies with
  # "Devices cgroup isn't mounted"): mount the same hierarchies again, in that private mount namespace only.
  cat > "$D/in-netns.sh" <<'EOS'
#!/bin/bash
set -e
mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
  mkdir -p /sys/fs/cgroup/$c; mountpoint -q /sys/fs/cgroup/$c || mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
mkdir -p /sys/fs/cgroup/systemd
mountpoint -q /sys/fs/cgroup/systemd || mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
exec "$@"
EOS
  chmod +x "$D/in-netns.sh"
  setsid ip netns exec "$NS" "$D/in-netns.sh" /usr/sbin/dockerd --config-file "$D/etc/daemon.json" \
    --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" -H "unix://$D/docker.sock" \
    --containerd-namespace "cmglab-$NS" --containerd-plugins-namespace "cmglab-$NS-plugins" \
    --storage-driver "$driver" > "$D/dockerd.log" 2>&1 < /dev/null &
  for i in $(seq 1 60); do
    DOCKER_HOST="unix://$D/docker.sock" docker version >/dev/null 2>&1 && { echo "engine up after ${i}s"; return 0; }
    sleep 1
  done
  tail -20 "$D/dockerd.log" >&2
  stop
  return 1
}

stop() {
  local p
  if [ -f "$D/dockerd.pid" ]; then
    p=$(cat "$D/dockerd.pid")
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"
      for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 1; done
      kill -0 "$p" 2>/dev/null && kill -KILL "$p" || true
    fi
    rm -f "$D/dockerd.pid"
  fi
  if [ -f "$D/exec/containerd/containerd.pid" ]; then
    p=$(cat "$D/exec/containerd/containerd.pid")
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 10); do kill -0 "$p" 2>/dev/null || break; sleep 1; done
    rm -f "$D/exec/containerd/containerd.pid"
  fi
  # the container shims dockerd leaves behind on a hard stop would keep the namespace's mounts alive
  for p in $(ip netns pids "$NS" 2>/dev/null || true); do kill -KILL "$p" 2>/dev/null || true; done
  if netns_exists; then ip netns delete "$NS"; fi
  echo "engine stopped"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: engine.sh start [overlay2|vfs] | stop" >&2; exit 2 ;;
esac
