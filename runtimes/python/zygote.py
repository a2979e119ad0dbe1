# lampyr's Python zygote: a pre-initialised Python process that forks new
# Python instances, as OpenLambda's SOCK does.
#
# lampyr starts it as root, with a control socket at fd 3 and the runtime
# bootstrap's path in LAMPYR_BOOTSTRAP, in a mount namespace of its own that
# shows the interpreter and the bootstrap where every sandbox shows them
# (/opt/lampyr/runtime or /usr, and /var/runtime): every module it imports
# has the paths it would have in a fresh interpreter inside a sandbox. It
# imports the bootstrap (and the standard-library modules functions commonly
# use) once, then serves FORK requests. Each request carries a JSON
# description and, as SCM_RIGHTS, the descriptors of a sandbox that lampyr
# has already built (its protocol socket and log pipes, its namespaces, its
# cgroup files). For each request:
#
#   zygote ── fork ──▶ C1: join the instance's cgroup, setns into its
#                          cgroup, ipc, uts, net, pid and mount namespaces
#                          (the mount namespace's root is the jail's root),
#                          fork again, report the child's pid, then become
#                          lampyr's small reaper (exec'd from the descriptor
#                          that came last with the request), which waits for
#                          G and passes its wait status to the sandbox's
#                          PID 1: the Python pages C1 has dirtied are freed
#                          instead of staying for the instance's lifetime
#                      G:  PID 2 of the sandbox: descriptors in place, limits, capability
#                          bounding set emptied, unprivileged uid/gid,
#                          no_new_privs, the seccomp filter lampyr compiled,
#                          fresh random state, then the bootstrap's main loop
#
# G ends up exactly where a freshly exec'd runtime would be: same
# namespaces, root, cgroup, uid and filter. Nothing request-specific is in
# the zygote to inherit: it never loads a function or serves a request.
#
# This file belongs to the sandbox layer: the system calls below are the
# same ones its Rust jail makes, in the same order, for a process that
# already exists.

import ctypes
import importlib.util
import json
import os
import random
import resource
import signal
import socket
import struct
import sys

# Modules functions commonly import, loaded once here and shared.
for _m in ("json", "asyncio", "base64", "datetime", "decimal", "hashlib", "hmac", "http.client",
           "logging", "re", "typing", "urllib.parse", "uuid", "concurrent.futures", "dataclasses"):
    try:
        importlib.import_module(_m)
    except Exception:
        pass

_spec = importlib.util.spec_from_file_location("lampyr_bootstrap", os.environ["LAMPYR_BOOTSTRAP"])
bootstrap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bootstrap)

libc = ctypes.CDLL(None, use_errno=True)
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Namespace descriptors arrive in this order; the mount namespace goes last
# because entering it changes the root directory.
NS_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def recv_request(ctl):
    # The descriptors ride on the first bytes of the message: receive them
    # with the header in one call.
    data, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 16, 32)
    if len(data) < 4:
        sys.exit(0)  # lampyr went away
    (n,) = struct.unpack(">I", data[:4])
    msg = data[4:]
    while len(msg) < n:
        more = ctl.recv(n - len(msg))
        if not more:
            sys.exit(0)
        msg += more
    return json.loads(msg), fds


def reply(ctl, obj):
    data = json.dumps(obj).encode()
    ctl.sendall(struct.pack(">I", len(data)) + data)


def become_instance(req, fds):
    """Runs in G, inside the sandbox: finish confining, then serve."""
    sock_fd, out_fd, err_fd = fds[0], fds[1], fds[2]
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.dup2(sock_fd, 3)
    os.closerange(4, 1 << 16)
    # Its own session and process group: no signal to the zygote's group
    # can reach it, and it can signal no other instance's.
    os.setsid()
    os.chdir("/")
    resource.setrlimit(resource.RLIMIT_NOFILE, (req["max_open_files"], req["max_open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([req["gid"]])
    os.setresgid(req["gid"], req["gid"], req["gid"])
    os.setresuid(req["uid"], req["uid"], req["uid"])
    if os.geteuid() == 0:
        raise OSError("still root after dropping privileges")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for prog in req["seccomp"]:
        code = bytes.fromhex(prog)
        buf = ctypes.create_string_buffer(code, len(code))
        fprog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")
    # Fresh randomness: nothing of the zygote's state is shared.
    random.seed()
    os.environ.clear()
    os.environ.update(req["env"])
    bootstrap.main()


def fork_instance(req, fds, report):
    """Runs in C1: enter the sandbox, fork G, report its pid, wait for it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ns = fds[4:4 + len(NS_ORDER)]
    cgroups = fds[4 + len(NS_ORDER):4 + len(NS_ORDER) + req["cgroups"]]
    reaper = fds[4 + len(NS_ORDER) + req["cgroups"]:]
    if len(cgroups) != req["cgroups"] or len(reaper) > 1:
        raise OSError("expected %d cgroup files and a reaper, got %d descriptors"
                      % (req["cgroups"], len(fds)))
    for fd in cgroups:
        os.write(fd, b"0")
    for name, fd in zip(NS_ORDER, ns):
        check(libc.setns(fd, 0), "setns " + name)
    pid = os.fork()
    if pid == 0:
        try:
            become_instance(req, fds)
        except BaseException as e:  # report, then die: never fall back to the zygote's loop
            try:
                msg = ("lampyr zygote: %s" % e).encode()
                os.write(3, struct.pack(">IB", len(msg) + 1, 0x05) + msg)
            finally:
                os._exit(125)
        os._exit(0)
    # Only G's wait status is C1's business now.
    os.write(report, struct.pack(">i", pid))
    os.close(report)
    status_w = fds[3]
    for fd in fds:
        if fd != status_w and fd not in reaper:
            os.close(fd)
    if reaper:
        try:
            os.set_inheritable(status_w, True)
            os.execve(reaper[0], ["lampyr-init", "__sandbox-init", "--reap", str(pid), str(status_w)], {})
        except OSError:
            pass  # wait here instead
    _, status = os.waitpid(pid, 0)
    os.write(status_w, struct.pack("=i", status))
    os._exit(0)


def main():
    ctl = socket.socket(fileno=3)
    # C1 helpers are reaped by the kernel; they outlive their request.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    reply(ctl, {"ready": True, "pid": os.getpid()})
    while True:
        req, fds = recv_request(ctl)
        r, w = os.pipe()
        c1 = os.fork()
        if c1 == 0:
            os.close(r)
            ctl.close()
            try:
                fork_instance(req, fds, w)
            except BaseException as e:
                try:
                    os.write(w, struct.pack(">i", -1) + str(e).encode()[:500])
                except BaseException:
                    pass
            finally:
                os._exit(1)
        os.close(w)
        for fd in fds:
            os.close(fd)
        data = b""
        while True:
            chunk = os.read(r, 1024)
            if not chunk:
                break
            data += chunk
        os.close(r)
        (pid,) = struct.unpack(">i", data[:4]) if len(data) >= 4 else (-1,)
        if pid > 0:
            reply(ctl, {"pid": pid})
        else:
            reply(ctl, {"error": data[4:].decode("utf-8", "replace") or "the fork failed"})


if __name__ == "__main__":
    main()
