"""Who may do what.

- `nanomesh.security.auth`: the management token, internal-call signatures,
  and what a caller without the token may see (the rules; the daemon applies
  them in `nanomesh.daemon.api_auth`);
- `nanomesh.security.keys`: the cluster keys, where they are kept, rotation;
- `nanomesh.security.servicekeys`: CURVE keys of service traffic, derived from
  the cluster key, and the ZAP handler that decides who may connect.
"""
