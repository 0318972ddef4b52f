#!/bin/sh
# A QEMU guest on vhost-user-netd's port for vm0 (contrib/vhost-user-netd@.socket), two queue
# pairs (the daemon's netdev with queues=2). Guest memory must be shared with the daemon: a
# memfd backend with share=on. reconnect-ms makes QEMU reconnect when the daemon restarts.
# Extra arguments (disk, kernel, console) are appended.
#   SOCK=/run/vhost-user-netd/vm0.sock ACCEL=kvm sh contrib/qemu-vm0.sh -kernel ... -append ...
SOCK=${SOCK:-/run/vhost-user-netd/vm0.sock}
ACCEL=${ACCEL:-kvm}
MEM=${MEM:-1G}
exec "${QEMU:-qemu-system-x86_64}" \
    -machine q35,accel="$ACCEL" -m "$MEM" \
    -object memory-backend-memfd,id=mem0,size="$MEM",share=on -numa node,memdev=mem0 \
    -chardev socket,id=vu0,path="$SOCK",reconnect-ms=1000 \
    -netdev vhost-user,id=net0,chardev=vu0,queues=2 \
    -device virtio-net-pci,netdev=net0,mq=on,vectors=6,mac=52:54:00:12:34:56 \
    "$@"
