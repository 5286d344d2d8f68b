"""Run a command as on a kernel without IPv6: socket(AF_INET6, ...) fails with
EAFNOSUPPORT, as it does on a kernel booted with ipv6.disable=1 or built without it.

    python -m tests.lab.seccomp -- COMMAND ARGS...

A seccomp filter (installed with prctl, kept across exec) answers that one system call;
everything else goes to the kernel. For the start-up failure tests of a kernel that lacks
a feature (tests/interop/test_startup_failures.py): the process sees exactly what such a
kernel returns. x86_64 and aarch64 only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct
import sys

# linux/audit.h and the system call tables
ARCHES = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # AUDIT_ARCH_*, __NR_socket
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
LD_ABS, JEQ, RET = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K


def supported() -> bool:
    return platform.machine() in ARCHES


def deny_ipv6_sockets() -> None:
    arch, nr_socket = ARCHES[platform.machine()]
    program = [
        (LD_ABS, 0, 0, 4),  # seccomp_data.arch
        (JEQ, 1, 0, arch),
        (RET, 0, 0, SECCOMP_RET_ALLOW),  # another ABI: not ours to judge
        (LD_ABS, 0, 0, 0),  # seccomp_data.nr
        (JEQ, 0, 3, nr_socket),
        (LD_ABS, 0, 0, 16),  # seccomp_data.args[0], low 32 bits (little endian)
        (JEQ, 0, 1, socket.AF_INET6),
        (RET, 0, 0, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT),
        (RET, 0, 0, SECCOMP_RET_ALLOW),
    ]
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(filters))  # struct sock_fprog
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    buffer = ctypes.create_string_buffer(fprog)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(buffer), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main() -> None:
    argv = sys.argv[sys.argv.index("--") + 1 :]
    deny_ipv6_sockets()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
