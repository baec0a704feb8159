#!/usr/bin/env python3
"""Measures an emulated link for tests/wan.sh: round-trip time and TCP goodput.

  wan-probe.py serve HOST PORT            UDP echo and a TCP source on HOST:PORT (runs until killed)
  wan-probe.py rtt HOST PORT COUNT        COUNT UDP echoes, 50 ms apart: min/median/max in ms
  wan-probe.py get HOST PORT MBYTES [CC]  receive MBYTES over TCP (the server's congestion
                                          control CC, default the system's): goodput in Mbit/s

No ping or iperf on the machine: plain sockets do both jobs.
"""
import socket
import statistics
import sys
import threading
import time


def serve(host, port):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, port))

    def echo():
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)

    threading.Thread(target=echo, daemon=True).start()
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen()
    chunk = b"\0" * 65536
    while True:
        conn, _ = tcp.accept()
        with conn:
            # The request: "<bytes> <congestion control or ->\n".
            request = conn.makefile().readline().split()
            total, cc = int(request[0]), request[1]
            if cc != "-":
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
            sent = 0
            while sent < total:
                sent += conn.send(chunk[: min(len(chunk), total - sent)])


def rtt(host, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    samples, lost = [], 0
    for i in range(count):
        start = time.perf_counter()
        s.sendto(str(i).encode(), (host, port))
        try:
            while s.recv(2048) != str(i).encode():
                pass
            samples.append((time.perf_counter() - start) * 1e3)
        except socket.timeout:
            lost += 1
        time.sleep(0.05)
    if not samples:
        sys.exit(f"rtt: no echo from {host}:{port}")
    print(f"rtt ms: min {min(samples):.2f} median {statistics.median(samples):.2f} "
          f"max {max(samples):.2f} ({len(samples)} echoes, {lost} lost)")


def get(host, port, mbytes, cc):
    total = int(mbytes * 1e6)
    s = socket.create_connection((host, port))
    s.sendall(f"{total} {cc}\n".encode())
    got, first = 0, None
    while got < total:
        data = s.recv(1 << 20)
        if not data:
            sys.exit(f"get: connection closed after {got} of {total} bytes")
        if first is None:
            first = time.perf_counter()
        got += len(data)
    seconds = time.perf_counter() - first
    print(f"tcp goodput ({cc}): {got * 8 / seconds / 1e6:.1f} Mbit/s "
          f"({got / 1e6:.0f} MB in {seconds:.1f} s)")


if __name__ == "__main__":
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "serve":
        serve(host, port)
    elif cmd == "rtt":
        rtt(host, port, int(sys.argv[4]))
    elif cmd == "get":
        get(host, port, float(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "-")
    else:
        sys.exit(f"unknown command {cmd!r}")
