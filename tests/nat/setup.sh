#!/usr/bin/env bash
# A client namespace (pgwake) reaching the host through a router namespace
# that NATs like a cloud NAT: idle flows expire after 5 s and their packets
# are then dropped silently (no RST). Usage: setup.sh ID; teardown.sh ID.
# Addresses: client 10.231.1.2, router 10.231.1.1 / 10.231.2.1, host 10.231.2.2.
# Only namespaces and the host-side veth made here are touched.
set -euo pipefail
P=pgwt$1
ip netns add ${P}c; ip netns add ${P}r
ip link add ${P}a type veth peer name ${P}b
ip link set ${P}a netns ${P}c; ip link set ${P}b netns ${P}r
ip link add ${P}s type veth peer name ${P}t
ip link set ${P}t netns ${P}r
ip -n ${P}c addr add 10.231.1.2/24 dev ${P}a; ip -n ${P}c link set ${P}a up; ip -n ${P}c link set lo up
ip -n ${P}c route add default via 10.231.1.1
ip -n ${P}r addr add 10.231.1.1/24 dev ${P}b; ip -n ${P}r link set ${P}b up
ip -n ${P}r addr add 10.231.2.1/24 dev ${P}t; ip -n ${P}r link set ${P}t up; ip -n ${P}r link set lo up
ip addr add 10.231.2.2/24 dev ${P}s; ip link set ${P}s up
ip netns exec ${P}r sysctl -qw net.ipv4.ip_forward=1
ip netns exec ${P}r nft -f - <<NFT
table ip nat {
  chain post {
    type nat hook postrouting priority 100
    oifname "${P}t" masquerade
  }
}
table inet filter {
  chain forward {
    type filter hook forward priority 0; policy drop
    ct state established,related accept
    iifname "${P}b" ct state new accept
  }
}
NFT
ip netns exec ${P}r sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=5
ip netns exec ${P}r sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
