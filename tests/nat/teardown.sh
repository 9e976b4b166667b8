#!/usr/bin/env bash
# Removes what setup.sh ID made; safe to run twice.
P=pgwt$1
ip netns del ${P}c 2>/dev/null; ip netns del ${P}r 2>/dev/null; ip link del ${P}s 2>/dev/null; true
