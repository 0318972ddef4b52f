#!/bin/sh
# A cloud-hypervisor guest on vhost-user-netd's port for vm0 (contrib/vhost-user-netd@.socket),
# two queue pairs: num_queues counts rx and tx queues, so 4 (the daemon's netdev with
# queues=2). Guest memory must be shared (shared=on). Extra arguments are appended.
#   SOCK=/run/vhost-user-netd/vm0.sock sh contrib/cloud-hypervisor-vm0.sh --kernel ... --disk ...
SOCK=${SOCK:-/run/vhost-user-netd/vm0.sock}
exec "${CLOUD_HYPERVISOR:-cloud-hypervisor}" \
    --cpus boot=2 --memory size="${MEM:-1G}",shared=on \
    --net vhost_user=true,socket="$SOCK",num_queues=4,queue_size=256,mac=52:54:00:12:34:56 \
    "$@"
