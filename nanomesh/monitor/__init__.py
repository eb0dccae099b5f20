"""Mesh events for operators: what a peer saw happen, kept and streamed.

- `eventlog`: the bounded ring of recent events with sequence numbers
  (append, "since seq" reads, how many a reader missed);
- `derive`: the facts worth an event, found by comparing what the daemon
  already knows (a gossip notification, two Raft sections, two committed
  plans, two snapshots of the local instances);
- `sse`: Server-Sent Events framing, both ways (the peer writes frames, the
  ``nanomesh monitor`` command parses them).

All pure: the daemon's shell (`nanomesh.daemon.events`) feeds them the
wall-clock time and carries the results to HTTP.
"""
