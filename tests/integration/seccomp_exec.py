"""Exec a command under a seccomp filter equivalent to a systemd unit's.

    /usr/bin/python3 seccomp_exec.py SPEC.json COMMAND ARGS...

Run by tests/integration/test_unit_sandbox.py with the system Python, which
has libseccomp's binding (Debian: python3-seccomp). SPEC is a JSON object:

- ``allow``: the syscalls of ``SystemCallFilter=`` (groups already expanded);
  everything else fails with ``SystemCallErrorNumber=`` (``errno``);
- ``families``: ``RestrictAddressFamilies=`` as numbers (``socket()`` with
  another family fails);
- ``restrict_suid_sgid``: ``RestrictSUIDSGID=``: creating or chmod-ing a
  file with the setuid or setgid bit fails (systemd lets setgid without
  group-execute through; this filter is stricter there), and ``openat2``
  answers ENOSYS (its mode is out of reach);
- ``forbidden_namespaces``: the ``CLONE_NEW*`` bits ``RestrictNamespaces=``
  leaves out (``unshare``, ``clone``, ``setns`` with any of them fail; as
  systemd, ``clone3`` answers ENOSYS because its flags are out of reach).

Only the native architecture is in the filter (``SystemCallArchitectures=
native``). The caller must have set no_new_privs or hold CAP_SYS_ADMIN.
"""

import contextlib
import json
import os
import sys

import seccomp  # type: ignore[import-not-found]

NAMESPACE_CALLS = ("unshare", "clone", "setns", "clone3")
MODE_ARG = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "mkdir": 1, "mkdirat": 2, "mknod": 1,
            "mknodat": 2, "open": 2, "openat": 3, "creat": 1}
"""Which argument of a call is the file mode (``RestrictSUIDSGID=``)."""
SUID_SGID = 0o6000
ENOSYS = 38


def build(spec: dict) -> "seccomp.SyscallFilter":
    errno = int(spec["errno"])
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno))
    suid = bool(spec.get("restrict_suid_sgid"))
    conditional = {"socket", *NAMESPACE_CALLS, *(MODE_ARG if suid else ()),
                   *(("openat2",) if suid else ())}
    for name in spec["allow"]:
        if name in conditional:
            continue
        # A syscall this libseccomp does not know is skipped, as systemd does.
        with contextlib.suppress(RuntimeError, ValueError):
            f.add_rule(seccomp.ALLOW, name)
    allowed = set(spec["allow"])
    if "socket" in allowed:
        for family in spec["families"]:
            f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    mask = int(spec["forbidden_namespaces"])
    for name, arg in (("unshare", 0), ("clone", 0), ("setns", 1)):
        if name in allowed:
            f.add_rule(seccomp.ALLOW, name, seccomp.Arg(arg, seccomp.MASKED_EQ, mask, 0))
    if "clone3" in allowed:
        f.add_rule(seccomp.ERRNO(ENOSYS), "clone3")  # glibc falls back to clone
    if suid:
        for name, arg in MODE_ARG.items():
            if name in allowed:
                f.add_rule(seccomp.ALLOW, name,
                           seccomp.Arg(arg, seccomp.MASKED_EQ, SUID_SGID, 0))
        if "openat2" in allowed:
            f.add_rule(seccomp.ERRNO(ENOSYS), "openat2")
    return f


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    build(spec).load()
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
