"""A tiny DNS server for lampyr's network tests: it answers A queries for
names listed on the command line (NAME=IPV4 ...) and NXDOMAIN otherwise, on
UDP and TCP. It is started by the tests inside a network namespace they
made; nothing else ever asks it."""
import socket
import socketserver
import struct
import sys
import threading

RECORDS = {}


def answer(query: bytes) -> bytes:
    if len(query) < 12:
        return b""
    tid, flags, qd = struct.unpack(">HHH", query[:6])
    i, labels = 12, []
    while i < len(query) and query[i] != 0:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    question = query[12 : i + 5]
    qtype = struct.unpack(">H", query[i + 1 : i + 3])[0] if i + 3 <= len(query) else 0
    name = ".".join(labels)
    ip = RECORDS.get(name)
    rd = flags & 0x0100
    if ip is None:
        return struct.pack(">HHHHHH", tid, 0x8183 | rd, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack(">HHHHHH", tid, 0x8180 | rd, 1, 0, 0, 0) + question
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return struct.pack(">HHHHHH", tid, 0x8180 | rd, 1, 1, 0, 0) + question + rr


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(answer(data), self.client_address)


class Tcp(socketserver.StreamRequestHandler):
    def handle(self):
        n = struct.unpack(">H", self.rfile.read(2))[0]
        out = answer(self.rfile.read(n))
        self.wfile.write(struct.pack(">H", len(out)) + out)


def main():
    bind = sys.argv[1]
    for kv in sys.argv[2:]:
        k, v = kv.split("=", 1)
        RECORDS[k.lower()] = v
    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((bind, 53), Udp)
    tcp = socketserver.ThreadingTCPServer((bind, 53), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("ready", flush=True)
    udp.serve_forever()


if __name__ == "__main__":
    main()
