"""Thin I/O adapters that carry service traffic and API calls.

- `nanomesh.transport.serving`: what every carrier shares (`RpcError`,
  `RpcTimeout`, `call_guarded`), without pyzmq;
- `nanomesh.transport.rpc`: service-to-service calls over ZeroMQ (`zmq_call`,
  `serve_rpc`); re-exports the shared errors;
- `nanomesh.transport.zmqtrio`: pyzmq sockets used natively from trio;
- `nanomesh.transport.coapio`: aiocoap hosted in trio through trio-asyncio;
- `nanomesh.transport.httpio`: HTTP/1.1 on trio with h11;
- `nanomesh.transport.apiclient`: the blocking client of a peer's API (the
  CLI and scripts; the daemon uses `nanomesh.daemon.peer_calls`).
"""
