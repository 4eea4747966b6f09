"""A socket.io server written with python-socketio (the library chutes-api's
validator uses), for checking that the Rust client's handshake is accepted by an
implementation other than our own emulator.

It prints one JSON line per thing that happens (ready, connect, authenticate,
ack, disconnect) so the Rust test can assert on them; it cannot verify sr25519
itself, so the test verifies the `authenticate` headers it prints.

Usage: python3 sio_server.py   (needs: pip install python-socketio aiohttp)
"""
import asyncio
import json
import sys

import socketio
from aiohttp import web

# Short ping schedule: a client that does not answer pings is dropped within ~4 s. The
# timeout leaves a busy test machine 3 s for a pong; the wait below outlasts interval + timeout.
sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=1, ping_timeout=3, transports=["websocket"])
app = web.Application()
sio.attach(app)

HEADERS = {"X-Chutes-Hotkey", "X-Chutes-Nonce", "X-Chutes-Signature"}


def out(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)


@sio.event
async def connect(sid, environ, auth=None):
    out("connect", sid=sid)


@sio.event
async def disconnect(sid, reason=None):
    out("disconnect", sid=sid, reason=str(reason))


@sio.on("authenticate")
async def authenticate(sid, data):
    out("authenticate", sid=sid, data=data)
    if not isinstance(data, dict) or set(data) != HEADERS:
        await sio.emit("auth_failed", {"error": "expected exactly the three signed headers"}, to=sid)
        return
    await sio.emit("auth_success", {"message": "Authenticated"}, to=sid)

    def acked(*args):
        out("ack", args=list(args))

    await sio.emit(
        "miner_broadcast",
        {"reason": "chute_created", "data": {"chute_id": "py-1", "version": "v1", "job_only": False}},
        to=sid,
        callback=acked,
    )
    # Several ping cycles later the connection must still be up.
    await asyncio.sleep(5)
    await sio.emit("miner_broadcast", {"reason": "chute_deleted", "data": {"chute_id": "py-1", "version": "v1"}}, to=sid)
    out("sent_late")


async def main():
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    out("ready", port=port)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
