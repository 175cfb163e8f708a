"""An X11 client in plain Python, run inside the dev container over `ssh -X`.

Connects to $DISPLAY (TCP, as sshd's X11UseLocalhost=no gives it) with the cookie xauth holds
for it, and prints the server's vendor and first screen's size. With --no-cookie it presents
no authentication, which the forwarding must refuse.
"""

import os
import socket
import struct
import subprocess
import sys

display = os.environ["DISPLAY"]
host, _, rest = display.rpartition(":")
number = int(rest.split(".")[0])
name, cookie = b"", b""
if "--no-cookie" not in sys.argv:
    words = subprocess.run(["xauth", "list", display], capture_output=True, text=True, check=True).stdout.split()
    name, cookie = words[1].encode(), bytes.fromhex(words[2])


def pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


sock = socket.create_connection((host or "localhost", 6000 + number), timeout=30)
sock.sendall(struct.pack("<cxHHHHxx", b"l", 11, 0, len(name), len(cookie)) + pad(name) + pad(cookie))
head = sock.recv(8, socket.MSG_WAITALL)
if len(head) < 8 or head[0] != 1:
    print("X11 refused:", head)
    sys.exit(1)
body = sock.recv(struct.unpack("<H", head[6:8])[0] * 4, socket.MSG_WAITALL)
vendor_len, formats = struct.unpack("<H", body[16:18])[0], body[21]
screen = 32 + vendor_len + (-vendor_len % 4) + 8 * formats
width, height = struct.unpack("<HH", body[screen + 20 : screen + 24])
print(f"X11 OK: {body[32 : 32 + vendor_len].decode()} {width}x{height}")
