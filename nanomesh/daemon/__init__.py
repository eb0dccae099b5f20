"""The trio shell: sockets, timers, threads and the HTTP API."""
