"""Warm start for the stage commands: a fork server that has imported the stack once.

Every stage job is its own ``python -m bcd <command>`` process, so Snakemake and DVC cache each
run on its own. On a CPU machine that costs ~6.5 s per job of Python importing torch, mmengine,
mmseg and mmrazor, and the embedded default has ~200 jobs. :func:`serve` imports them once
and then forks one child per request: a job whose environment names the server's socket
(``BCD_WARM_SOCKET``) sends its argv, working directory, environment and standard streams to it
and exits with the child's exit status. The child is a copy of a process that has only imported
modules, so what it computes is what a fresh process computes (``tests/test_warm.py`` compares
the weights and metrics of both, bit for bit).

- Nothing depends on the server: with no socket set, an unreachable server, a torchrun
  process or ``BCD_RECORD_IMPORTS`` (the import-graph tests), the command runs in its own
  process as before.
- Code edited after the server started is never run stale: the child compares every file under
  ``bcd/`` with what the server saw and, on any difference (or a job from another checkout or
  interpreter), replaces itself with a fresh ``python -m bcd`` (``os.execv``).
- A killed job kills its child (the server watches the job's connection); the server exits
  with the process that started it (``--parent``).
- CPU only: the Snakefile starts it for local execution without GPUs (a CUDA context does
  not survive ``fork``); ``BCD_WARM_START=0`` turns it off.

    python -m bcd serve --socket /tmp/bcd.sock [--parent PID] &
    BCD_WARM_SOCKET=/tmp/bcd.sock python -m bcd train --params ... --run r18 --seed 0
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path

SOCKET_ENV = "BCD_WARM_SOCKET"  # a job's environment: the server to use
SWITCH_ENV = "BCD_WARM_START"   # "0": the Snakefile starts no server
_PKG = Path(__file__).resolve().parent
_HEADER = struct.Struct("!I")
#: modules a stage command may need: imported once by the server
PRELOAD = ("bcd.cli", "bcd.mm", "bcd.train", "bcd.evaluate", "bcd.tables", "bcd.figures",
           "bcd.specrecord", "mmengine.runner", "mmengine.analysis",
           "torch._dynamo")  # imported by torch.optim's first optimizer


class ServerGone(ConnectionError):
    """The server closed the connection without an exit status (the child crashed)."""


def socket_path(key: str) -> str:
    """A socket path for a server keyed by ``key`` (short enough for AF_UNIX's 108 bytes)."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(f"{os.getuid()}:{key}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"bcd-warm-{digest}.sock")


def source_stamp() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file of the bcd package: what the server's imports were read from."""
    out = {}
    for path in _PKG.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            st = path.stat()
            out[str(path)] = (st.st_mtime_ns, st.st_size)
    return out


# --- the job's side -------------------------------------------------------------------------

def _use_server(argv) -> str | None:
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get("BCD_RECORD_IMPORTS") or argv[:1] == ["serve"]:
        return None
    if "LOCAL_RANK" in os.environ or "--launcher" in argv and "pytorch" in argv:
        return None  # torchrun: one process per rank, started by torchrun
    return path


def run_remote(argv: list[str]) -> int | None:
    """Run ``python -m bcd <argv>`` in a child of the warm server: its exit status, or None when
    no server is to be used (the caller runs the command itself)."""
    path = _use_server(argv)
    if path is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None  # not started (yet), or gone: run here
    with conn:
        request = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ),
                              "package": str(_PKG), "executable": sys.executable}).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        socket.send_fds(conn, [_HEADER.pack(len(request)) + request], [0, 1, 2])
        reply = _recv_exact(conn, _HEADER.size)
    if reply is None:
        print("bcd: the warm-start server lost this job (its child ended without a status)",
              file=sys.stderr)
        return 1
    return _HEADER.unpack(reply)[0]


def _recv_exact(conn, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# --- the server's side ----------------------------------------------------------------------

def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _run_child(request: dict, stamp: dict, fds: list[int], run) -> None:
    """In the forked child: become the job (streams, directory, environment, argv) and run it."""
    os.setsid()  # its own process group: a kill of the job reaches what it starts
    for sig, handler in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGCHLD, signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
        signal.signal(sig, handler)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.pop(SOCKET_ENV, None)  # what this process starts runs on its own
    argv = request["argv"]
    sys.argv = [sys.argv[0], *argv]
    why = None
    if request.get("package") != str(_PKG) or request.get("executable") != sys.executable:
        why = "the job's bcd or Python is not the warm-start server's"
    elif source_stamp() != stamp:
        why = "the code changed since the warm-start server started"
    if why:  # run the job's own code, as a fresh process would
        print(f"bcd: {why}: running in a fresh process", file=sys.stderr, flush=True)
        exe = request.get("executable") or sys.executable
        os.execv(exe, [exe, "-m", "bcd", *argv])
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=stream.isatty())
    try:
        code = run(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001  (reported as a fresh process would)
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _handle(conn, stamp: dict, run) -> None:
    """In a forked handler: start the job's child, relay its exit status, kill it if the job
    goes away."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size = _HEADER.unpack(msg[:_HEADER.size])[0]
    body = msg[_HEADER.size:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            os._exit(1)
        body += more
    request = json.loads(body)
    print(f"bcd warm-start: {' '.join(request['argv'])}", flush=True)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_child(request, stamp, fds, run)
    for fd in fds:
        os.close(fd)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            try:
                conn.sendall(_HEADER.pack(_exit_status(status)))
            except OSError:
                pass
            os._exit(0)
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable and not conn.recv(1, socket.MSG_PEEK):  # the job was killed
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os._exit(0)


def _alive(parent: int | None) -> bool:
    """Whether the process that started the server still runs (an orphan is re-parented)."""
    return parent is None or os.getppid() == parent


def _preload(names) -> None:
    """Import ``names`` and what the registries would import lazily in every job, then move
    everything to gc's permanent generation: a child's collections (mmengine and training
    call ``gc.collect``) then skip the inherited objects, which also stay shared with the server
    instead of being copied on the collector's writes."""
    import gc
    import importlib

    for name in names:
        importlib.import_module(name)
    if "bcd.mm" in names:  # the registries' lazy imports (mmrazor's visualizer, hooks, ...)
        from mmrazor.utils import register_all_modules as razor_modules
        from mmseg.utils import register_all_modules as seg_modules

        seg_modules(init_default_scope=False)
        razor_modules(init_default_scope=False)
    gc.collect()
    gc.freeze()


def serve(path: str, run, parent: int | None = None, preload=PRELOAD) -> None:
    """Import ``preload``, then fork a child per job connecting to ``path`` that calls
    ``run(argv)`` (:func:`bcd.cli.main`), until ``parent`` (a pid) exits or the server is
    terminated. The socket is removed on the way out."""
    os.environ.pop(SOCKET_ENV, None)
    _preload(preload)
    stamp = source_stamp()
    Path(path).unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    os.chmod(path + ".tmp", 0o600)
    server.listen(64)
    os.replace(path + ".tmp", path)  # connectable only once listening
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"bcd warm-start server {os.getpid()} on {path} (preloaded {len(preload)} modules)",
          flush=True)
    try:
        while _alive(parent):
            readable, _, _ = select.select([server], [], [], 1.0)
            if not readable:
                continue
            conn, _ = server.accept()
            if os.fork() == 0:
                server.close()
                try:
                    _handle(conn, stamp, run)
                finally:
                    os._exit(1)
            conn.close()
    finally:
        server.close()
        Path(path).unlink(missing_ok=True)


def start(log: str | os.PathLike):
    """Start a server for this process (its parent) in the background and name it in this
    process's environment (``BCD_WARM_SOCKET``), which the jobs it starts inherit; the server's
    ``Popen``. It logs to ``log``; jobs that start before it listens run on their own."""
    import subprocess

    path = socket_path(f"{os.getpid()}:{os.getcwd()}")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bcd", "serve", "--socket", path,
                                 "--parent", str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    os.environ[SOCKET_ENV] = path
    return proc


def stop(proc) -> None:
    """Stop a server :func:`start` started (its jobs have ended) and forget it."""
    os.environ.pop(SOCKET_ENV, None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except Exception:  # noqa: BLE001  (it exits with this process anyway)
            proc.kill()
