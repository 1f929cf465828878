"""Real servers and clients of the protocols the node's Envoy must carry: gRPC (grpcio),
WebSocket (websockets), and an HTTP CONNECT forward proxy. Run by Debian's /usr/bin/python3
(python3-grpcio and python3-websockets, installed by `cargo xtask setup`); used by
`l7r_lab::protocols`.

Servers print `ready` on stderr once they listen; clients print one JSON object on stdout.
Every server answers with the peer it saw, so a test can tell a proxied call from a direct one.
"""

import asyncio
import json
import socket
import sys
import threading
from concurrent import futures


def ready():
    print("ready", file=sys.stderr, flush=True)


# --- gRPC: service l7r.Echo, methods Echo (answers "<request> from <peer>") and Fail (always
# NOT_FOUND, which travels as HTTP 200 with grpc-status 5). Raw bytes, no protobuf: grpcio
# passes them through when no (de)serializer is given.

SERVICE = "l7r.Echo"


def grpc_server(host, port):
    import grpc

    def echo(request, context):
        return request + b" from " + context.peer().encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Fail": grpc.unary_unary_rpc_method_handler(fail),
                },
            ),
        )
    )
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    ready()
    server.wait_for_termination()


def grpc_client(target):
    import grpc

    # No proxy from the environment: the call must go where the test says.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Echo")
        fail = channel.unary_unary(f"/{SERVICE}/Fail")
        answer = echo(b"ping", timeout=5).decode()
        try:
            fail(b"ping", timeout=5)
            fail_code = 0
        except grpc.RpcError as e:
            fail_code = e.code().value[0]
    print(json.dumps({"echo": answer, "fail_code": fail_code}))


# --- WebSocket: echoes each message as "<message> from <peer ip>".


def ws_server(host, port):
    import websockets

    async def echo(ws, path=None):
        peer = ws.remote_address[0]
        async for message in ws:
            await ws.send(f"{message} from {peer}")

    async def main():
        async with websockets.serve(echo, host, int(port)):
            ready()
            await asyncio.Future()

    asyncio.run(main())


def ws_client(url):
    import websockets

    async def main():
        async with websockets.connect(url, open_timeout=5) as ws:
            await ws.send("hello")
            first = await asyncio.wait_for(ws.recv(), 5)
            await ws.send("again")
            second = await asyncio.wait_for(ws.recv(), 5)
            return [first, second]

    print(json.dumps({"echo": asyncio.run(main())}))


# --- A forward proxy that serves CONNECT only: it opens the tunnel to the target it is asked
# for and relays bytes both ways, as a Service running squid or the like would.


def relay(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def serve_connect(conn):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        request_line = head.split(b"\r\n", 1)[0].decode()
        method, target, _ = request_line.split(" ", 2)
        if method != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=5)
        upstream.settimeout(None)
        with upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            back = threading.Thread(target=relay, args=(upstream, conn), daemon=True)
            back.start()
            relay(conn, upstream)
            back.join(10)


def connect_proxy(host, port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(64)
    ready()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connect, args=(conn,), daemon=True).start()


COMMANDS = {
    "grpc-server": grpc_server,
    "grpc-client": grpc_client,
    "ws-server": ws_server,
    "ws-client": ws_client,
    "connect-proxy": connect_proxy,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
