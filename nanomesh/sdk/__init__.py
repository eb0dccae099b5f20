"""The SDK for nanoservice authors.

- `nanomesh.sdk.service`: write a nanoservice (`NanoService`, routes, state);
- `nanomesh.sdk.client`: call services by name from any program (`connect`);
- `nanomesh.sdk.events`: publish/subscribe between nanoservices.

Calls travel through `nanomesh.transport` (ZeroMQ, CoAP, HTTP), which the
gateway shares. Importing this package imports none of them (each pulls in
trio and ZeroMQ).
"""
