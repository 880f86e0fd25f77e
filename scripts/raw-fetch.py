"""Times raw Fetch v4 requests of up to 50 MB (6 partitions x 10 MB) against a broker holding
the topic `t1k` written by scripts/bench-vs-kafka.sh, reading each response fully and
discarding it: the broker's fetch serving rate with the least client work possible.
Usage: python3 scripts/raw-fetch.py HOST:PORT
"""
import socket, struct, sys, time
host, port = sys.argv[1].split(":")
s = socket.create_connection((host, int(port)))
def recvn(n):
    buf = bytearray(n); view = memoryview(buf); got = 0
    while got < n:
        r = s.recv_into(view[got:], n - got)
        if r == 0: raise EOFError
        got += r
    return buf
def fetch(corr, offset):
    body = struct.pack(">hhih", 1, 4, corr, 3) + b"raw"
    body += struct.pack(">iiiib", -1, 500, 1, 52428800, 0)
    body += struct.pack(">i", 1) + struct.pack(">h", 3) + b"t1k" + struct.pack(">i", 6)
    for p in range(6):
        body += struct.pack(">iqi", p, offset, 10485760)
    s.sendall(struct.pack(">i", len(body)) + body)
    n = struct.unpack(">i", recvn(4))[0]
    recvn(n)
    return n
total = 0; t0 = time.time()
for i in range(30):
    total += fetch(i, (i % 10) * 10_000)
dt = time.time() - t0
print(f"{sys.argv[1]}: {total/1e6:.0f} MB in {dt:.2f}s = {total/dt/1e6:.0f} MB/s")
