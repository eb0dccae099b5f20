"""nanomesh: a peer-to-peer service mesh for local edge/IoT clusters."""

__version__ = "0.1.0"
