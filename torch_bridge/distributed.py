"""Ring all-reduce across processes, on torch.distributed point-to-point messages.

The schedule is ``ref_numpy.ring_allreduce``'s (Patarasuk & Yuan 2009; Baidu's ring all-reduce,
Gibiansky 2017; NCCL): p chunks, 2(p - 1) steps, at step t rank r sends chunk (r - t) mod p to
rank r + 1 and receives chunk (r - t - 1) mod p from rank r - 1, combining during the
reduce-scatter and copying during the all-gather. Here each rank is a process and every transfer
is a point-to-point send / receive of the process group (what ``dist.isend`` / ``dist.irecv``
call); ``dist.all_reduce`` is never called. It works on any initialised process group: spawned
on one machine over gloo (:class:`LocalGroup`), under ``torchrun`` across machines (after
``dist.init_process_group``), over NCCL with the tensor on the rank's GPU (every buffer it
allocates lives on the tensor's device).

Pipelining (NCCL's design). Each chunk travels as segments of ``segment`` elements, and a rank
sees its 2(p - 1) steps as one stream of segments to receive. ``IN_FLIGHT`` receives are posted
ahead of the one being consumed; as soon as a segment of step t has arrived (and, in the
reduce-scatter, been combined into the buffer) it is sent on as the same segment of step t + 1,
since the chunk received at step t is the one sent at step t + 1. So a rank's sends, receives and
reductions overlap, and segments flow around the ring without waiting for whole steps. Receives
are posted before sends, so that a sender learns early that its peer is ready. Sends read the
buffer in place: the data of an all-gather receive is that of the send which last read the same
region (p - 1 steps earlier) come round the ring, so it lands only after that send is done (and
the send's work is waited for first where it has been posted).

Agreement check. Before any data moves, the ranks pass a small header around the ring (p - 1
messages of 48 bytes, not counted in the traffic): element count, shape, dtype, reduction and
segment size. If any differ, every rank raises the same ValueError listing each rank's values;
then dtype and reduction are validated, identically everywhere. A rejected call leaves the group
usable. Even ranks send before they receive in this first exchange and odd ranks the other way
round, so that NCCL's lazily created two-rank communicators cannot wait on each other in a cycle.
The pass costs p - 1 message latencies; ``check=False`` skips it (as dist.all_reduce does not
check), for a loop that reduces the same tensor every step: a mismatch then fails as there,
with a size error or a timeout.

Faults. Every wait is bounded by ``timeout`` seconds (``work.wait(timeout)``; gloo raises
"Timed out waiting ...", and "Connection closed by peer" at once when a peer process exits). Either
becomes :class:`RingTimeout` naming this rank, the peer it was waiting for and the transfer; the
tensor then holds no result. A rank that never joins is reported by :func:`join_group`.
:class:`LocalGroup` gives the other ranks ``timeout`` more seconds to report once one fails,
then kills what is left.

Determinism: see ``ref_numpy.ring_allreduce``; each chunk is reduced once, on its owner, in ring
order, and copied unchanged, so all ranks hold identical bits, equal to the NumPy simulation's.

Under torchrun, on one machine or many, every rank checks the ring against dist.all_reduce:

    torchrun --nproc-per-node 4 -m torch_bridge.distributed --elements 1000000 --op sum
"""
from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing import connection

import torch
import torch.distributed as dist

from ref_numpy.ring_allreduce import (DTYPES, OPS, REDUCE_SCATTER, Transfer, check_op,
                                      rank_schedule)

# Elements per message: 4 MiB of float32. Each message costs a few Python-level calls on each
# side; at 1 MiB the ring on 4 ranks over gloo took 1.45x dist.all_reduce's time at 16 MiB,
# at 4 MiB 1.17x (crosscheck bench allreduce, two cores).
DEFAULT_SEGMENT = 1 << 20
DEFAULT_TIMEOUT = 20.0          # seconds a rank waits for one message before giving up
IN_FLIGHT = 2                   # receives posted ahead (gloo's own ring keeps two too)
JOIN_GRACE = 0.5                # extra seconds rank 0 keeps the store up when a rank is missing
_KNOWN_DTYPES = (torch.float32, torch.float64, torch.int64, torch.float16, torch.bfloat16,
                 torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
                 torch.complex64, torch.complex128)
_COMBINE = {"sum": torch.Tensor.add_, "mean": torch.Tensor.add_, "product": torch.Tensor.mul_,
            "max": lambda a, b: torch.maximum(a, b, out=a),
            "min": lambda a, b: torch.minimum(a, b, out=a)}
_NOT_INT = -(2 ** 62)           # the header's segment when it is not an int


class RingTimeout(TimeoutError):
    """A peer sent nothing within the timeout, or its connection closed (it exited or
    crashed)."""

    def __init__(self, message: str, rank: int, peer: int):
        super().__init__(message)
        self.rank, self.peer = rank, peer


@dataclass(frozen=True)
class RingStats:
    """What one rank's call moved: tensor data only (the agreement check is not counted)."""
    rank: int
    world_size: int
    elements_sent: int
    elements_received: int
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    trace: tuple[Transfer, ...]     # this rank's transfers, as ref_numpy.rank_schedule lists them


def _check_timeout(timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout: expected seconds > 0 but got {type(timeout).__name__}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout: expected seconds > 0 but got {timeout}")
    return float(timeout)


class _Ring:
    """This rank's place in the ring: its process group, its neighbours (ranks in the group) and
    bounded waits, whose errors say ``what`` transfer failed. Messages go straight to the group's
    ``send`` / ``recv``, which ``dist.isend`` / ``dist.irecv`` call after their argument
    checks."""

    def __init__(self, group, timeout: float):
        self.pg = dist.group.WORLD if group is None else group
        self.p, self.rank = self.pg.size(), self.pg.rank()
        self.next, self.prev = (self.rank + 1) % self.p, (self.rank - 1) % self.p
        self.timeout, self._span = timeout, datetime.timedelta(seconds=timeout)

    def send(self, t: torch.Tensor, what: str):
        return self._guard(self.next, what, lambda: self.pg.send([t], self.next, 0))

    def recv(self, t: torch.Tensor, what: str):
        return self._guard(self.prev, what, lambda: self.pg.recv([t], self.prev, 0))

    def wait(self, work, peer: int, what: str) -> None:
        self._guard(peer, what, lambda: work.wait(self._span))

    def _guard(self, peer: int, what: str, call):
        t0 = time.monotonic()
        try:
            return call()
        except RuntimeError as exc:
            text = str(exc).lower()
            if "timed out" in text:
                raise RingTimeout(f"rank {self.rank}: timed out after {self.timeout:g} s waiting "
                                  f"for rank {peer} while {what} (rank {peer} may have died, "
                                  f"hung or never called ring_all_reduce)", self.rank, peer
                                  ) from exc
            if any(word in text for word in ("closed", "reset", "broken pipe")):
                raise RingTimeout(f"rank {self.rank}: lost rank {peer} after "
                                  f"{time.monotonic() - t0:.2f} s while {what}: the connection "
                                  f"closed (rank {peer} exited or crashed)", self.rank, peer
                                  ) from exc
            raise

    def all_gather(self, row: torch.Tensor, what: str) -> torch.Tensor:
        """Every rank's ``row`` (int64, same length everywhere): p - 1 steps around the ring."""
        rows = torch.zeros((self.p, row.numel()), dtype=row.dtype, device=row.device)
        rows[self.rank] = row
        for s in range(self.p - 1):
            label = f"{what} (step {s} of {self.p - 1})"
            out, into = rows[(self.rank - s) % self.p], rows[(self.rank - s - 1) % self.p]
            if self.rank % 2 == 0:
                works = [(self.send(out, label), self.next), (self.recv(into, label), self.prev)]
            else:
                works = [(self.recv(into, label), self.prev), (self.send(out, label), self.next)]
            for work, peer in works:
                self.wait(work, peer, label)
        return rows.cpu()


def _code(table, value) -> int:
    return table.index(value) if value in table else -1


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape_key(shape) -> int:
    key = 0
    for d in shape:
        key = (key * 1_000_003 + d + 1) % (2 ** 61 - 1)
    return key


def _describe(row, shape) -> str:
    dtype = _name(_KNOWN_DTYPES[row[3]]) if row[3] >= 0 else "another dtype"
    op = repr(OPS[row[4]]) if row[4] >= 0 else "an unknown op"
    segment = "not an int" if row[5] == _NOT_INT else row[5]
    return f"shape {tuple(shape)} {dtype}, op {op}, segment {segment}"


def _agree(ring: _Ring, tensor: torch.Tensor, op, segment) -> None:
    """Raise the same ValueError on every rank unless all ranks passed the same element count,
    shape, dtype, op and segment."""
    seg = segment if isinstance(segment, int) and not isinstance(segment, bool) else _NOT_INT
    header = [tensor.numel(), tensor.dim(), _shape_key(tensor.shape),
              _code(_KNOWN_DTYPES, tensor.dtype), _code(OPS, op), seg]
    rows = ring.all_gather(torch.tensor(header, device=tensor.device),
                           "exchanging headers (agreement check)")
    if bool((rows == rows[0]).all()):
        return
    ndim = max(int(rows[:, 1].max()), 1)
    padded = torch.full((ndim,), -1, dtype=torch.int64, device=tensor.device)
    padded[:tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    shapes = ring.all_gather(padded, "exchanging shapes (agreement check)")
    groups: dict[str, list[int]] = {}
    for k in range(ring.p):
        row = rows[k].tolist()
        groups.setdefault(_describe(row, shapes[k, :row[1]].tolist()), []).append(k)
    parts = [f"rank{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}: {d}"
             for d, ks in groups.items()]
    raise ValueError("tensor: ring_all_reduce needs the same shape, dtype, op and segment on "
                     "every rank but got " + "; ".join(parts))


def _check_agreed(tensor: torch.Tensor, op, segment) -> int:
    name = _name(tensor.dtype)
    if name not in DTYPES:
        raise TypeError(f"tensor: expected dtype {', '.join(DTYPES)} but got {tensor.dtype}")
    check_op(op, name)
    if isinstance(segment, bool) or not isinstance(segment, int):
        raise TypeError(f"segment: expected a positive int but got {type(segment).__name__}")
    if segment < 1:
        raise ValueError(f"segment: expected a positive int but got {segment}")
    return segment


def ring_all_reduce(tensor: torch.Tensor, op: str = "sum", *, segment: int = DEFAULT_SEGMENT,
                    timeout: float = DEFAULT_TIMEOUT, check: bool = True,
                    group=None) -> RingStats:
    """Reduce ``tensor`` in place across every rank of ``group`` (default: the world) by the ring.

    Args:
        tensor: float32, float64 or int64, any shape (reduced flattened), the same shape and
            dtype on every rank; on the device of the group's backend (CPU for gloo).
        op: sum, mean, max, min or product (mean: float dtypes only).
        segment: elements per message (the pipelining grain), the same on every rank.
        timeout: seconds to wait for any one message before raising :class:`RingTimeout`.
        check: first make sure every rank passed the same shape, dtype, op and segment.
        group: a process group; None is the default group.
    Returns:
        This rank's :class:`RingStats`. After an exception the tensor holds no result.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor but got {type(tensor).__name__}")
    timeout = _check_timeout(timeout)
    if not dist.is_initialized():
        raise RuntimeError("ring_all_reduce: no process group; call dist.init_process_group "
                           "(or join_group) first")
    ring = _Ring(group, timeout)
    if check:
        _agree(ring, tensor, op, segment)
    segment = _check_agreed(tensor, op, segment)
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.reshape(-1)
    stats = _run(ring, flat, op, segment)
    if not tensor.is_contiguous():
        tensor.copy_(flat.view(tensor.shape))
    return stats


def _run(ring: _Ring, flat: torch.Tensor, op: str, segment: int) -> RingStats:
    """The 2(p - 1) steps as one stream of segments (see the module docstring)."""
    p, rank = ring.p, ring.rank
    plan = rank_schedule(p, flat.numel(), rank)
    combine = _COMBINE[op]
    # every segment this rank receives, in order; the one received as step t is sent at t + 1
    incoming = [(t, a, min(a + segment, tr.recv[1]))
                for t, tr in enumerate(plan) for a in range(*tr.recv, segment)]
    widest = max([b - a for _, a, b in incoming], default=0)
    staging = torch.empty((IN_FLIGHT, widest), dtype=flat.dtype, device=flat.device)
    sending: dict[tuple[int, int], object] = {}       # (step, start) -> its unfinished send
    posted = {"send": [[] for _ in plan], "recv": [[] for _ in plan]}

    def what(verb, t):
        chunk = plan[t].send_chunk if verb == "sending" else plan[t].recv_chunk
        return f"{verb} chunk {chunk} at step {t} ({plan[t].phase})"

    def send(t, a, b):
        sending[t, a] = ring.send(flat[a:b], what("sending", t))
        posted["send"][t].append((a, b))

    def receive(i):
        t, a, b = incoming[i]
        if plan[t].phase == REDUCE_SCATTER:
            into = staging[i % IN_FLIGHT, :b - a]
        else:       # in place: the send that last read this region (p - 1 steps ago) ends first
            into = flat[a:b]
            if (t - p + 1, a) in sending:
                ring.wait(sending.pop((t - p + 1, a)), ring.next, what("sending", t - p + 1))
        posted["recv"][t].append((a, b))
        return ring.recv(into, what("receiving", t)), into

    # receives are posted before sends, so that the sender learns early that they are ready
    window = deque(receive(i) for i in range(min(IN_FLIGHT, len(incoming))))
    if plan:
        for a in range(*plan[0].send, segment):
            send(0, a, min(a + segment, plan[0].send[1]))
    for i, (t, a, b) in enumerate(incoming):
        work, into = window.popleft()
        ring.wait(work, ring.prev, what("receiving", t))
        if plan[t].phase == REDUCE_SCATTER:
            combine(flat[a:b], into)
            if op == "mean" and t == p - 2:              # the owner divides its chunk, once
                flat[a:b].div_(p)
        if i + IN_FLIGHT < len(incoming):
            window.append(receive(i + IN_FLIGHT))
        if t + 1 < len(plan):
            send(t + 1, a, b)
    for (t, _), work in sending.items():
        ring.wait(work, ring.next, what("sending", t))

    def span(ranges, planned):
        return (ranges[0][0], ranges[-1][1]) if ranges else (planned[0], planned[0])

    trace = tuple(tr._replace(send_to=ring.next, recv_from=ring.prev,
                              send=span(posted["send"][t], tr.send),
                              recv=span(posted["recv"][t], tr.recv))
                  for t, tr in enumerate(plan))
    sent, received = ([b - a for r in posted[k] for a, b in r] for k in ("send", "recv"))
    size = flat.element_size()
    return RingStats(rank=rank, world_size=p, elements_sent=sum(sent),
                     elements_received=sum(received), bytes_sent=sum(sent) * size,
                     bytes_received=sum(received) * size, messages_sent=len(sent),
                     messages_received=len(received), trace=trace)


# ----------------------------------------------------------------------------- joining

def join_group(rank: int, world_size: int, *, port: int, addr: str = "127.0.0.1",
               backend: str = "gloo", timeout: float = DEFAULT_TIMEOUT) -> None:
    """Join the default process group as ``rank`` of ``world_size``, rank 0 hosting the store at
    ``addr:port``; every rank waits at most ``timeout`` s for all the others to join, and raises
    :class:`RingTimeout` naming the ranks that did not. (Under torchrun, call
    ``dist.init_process_group(backend)`` instead: its rendezvous does this.)"""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected a positive int but got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected an int in [0, {world_size}) but got {rank!r}")
    timeout = _check_timeout(timeout)
    span = datetime.timedelta(seconds=timeout)
    t0 = time.monotonic()
    try:
        store = dist.TCPStore(addr, port, world_size, is_master=rank == 0, timeout=span,
                              wait_for_workers=False)
    except (RuntimeError, TimeoutError) as exc:
        if rank == 0:
            raise
        raise RingTimeout(f"rank {rank}: rank 0 never joined: no store at {addr}:{port} within "
                          f"{timeout:g} s", rank, 0) from exc
    store.set(f"ring/joined/{rank}", "1")
    keys = [f"ring/joined/{k}" for k in range(world_size)]
    # rank 0 keeps its store up a little longer, so that the others can still ask who is missing
    left = timeout - (time.monotonic() - t0) + (JOIN_GRACE if rank == 0 else 0)
    try:
        store.wait(keys, datetime.timedelta(seconds=max(left, 0.001)))
    except (RuntimeError, TimeoutError) as exc:
        try:
            missing = [k for k in range(world_size) if not store.check([keys[k]])]
        except RuntimeError:
            raise RingTimeout(f"rank {rank}: rank 0, which hosts the store, left before every "
                              f"rank had joined", rank, 0) from exc
        raise RingTimeout(f"rank {rank}: rank{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(str, missing))} never joined within {timeout:g} s",
                          rank, missing[0]) from exc
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=span)


# ----------------------------------------------------------------------------- processes

class GroupError(RuntimeError):
    """Some ranks of a :class:`LocalGroup` failed; ``failures`` maps each to what happened."""

    def __init__(self, failures: dict[int, str]):
        super().__init__("; ".join(f"rank {r}: {m}" for r, m in sorted(failures.items())))
        self.failures = failures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, backend, timeout, threads, conn) -> None:
    """One rank: join, then run each (fn, args) command until None; a failure is reported and
    ends the process at once (a broken group is not torn down: transfers may still be
    pending)."""
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        join_group(rank, world_size, port=port, backend=backend, timeout=timeout)
        conn.send(("ok", None))
        while (command := conn.recv()) is not None:
            fn, args = command
            conn.send(("ok", fn(*args)))
        dist.destroy_process_group()
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        os._exit(1)


class LocalGroup:
    """``world_size`` processes on this machine, joined over ``backend`` on 127.0.0.1 at a free
    port; :meth:`call` runs ``fn(*args)`` on every rank and returns the results by rank.

    Ranks are forked from a forkserver that has imported torch once, so starting one costs a
    fork, not an import. When a rank fails (an exception, or its process dies), the others get
    ``timeout`` more seconds to report their own errors, then every process is killed and
    :class:`GroupError` lists what each failed rank reported; no partial result is returned.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, world_size: int, *, backend: str = "gloo",
                 timeout: float = DEFAULT_TIMEOUT, threads: int | None = 1):
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size: expected a positive int but got {world_size!r}")
        self.timeout = _check_timeout(timeout)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch.distributed", __name__])
        port = _free_port()
        self.conns, self.procs = [], []
        for rank in range(world_size):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, daemon=True, name=f"ring rank {rank}",
                               args=(rank, world_size, port, backend, self.timeout, threads,
                                     theirs))
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)
        self._collect()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def call(self, fn, *args) -> list:
        """``fn(*args)`` on every rank (``fn`` a module-level function); the results by rank."""
        if not self.conns:
            raise RuntimeError("LocalGroup: the group is closed")
        for rank, conn in enumerate(self.conns):
            try:
                conn.send((fn, args))
            except OSError:
                pass        # that rank is gone; _collect says how
        return self._collect()

    def _collect(self) -> list:
        replies: dict[int, tuple] = {}
        deadline = None
        while len(replies) < len(self.procs):
            waiting = {self.conns[r]: r for r in range(len(self.procs)) if r not in replies}
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            ready = connection.wait(list(waiting), left)
            if not ready:
                break
            for conn in ready:
                rank = waiting[conn]
                try:
                    replies[rank] = conn.recv()
                except (EOFError, OSError):
                    replies[rank] = ("error", self._exit_status(rank))
                if replies[rank][0] != "ok" and deadline is None:
                    deadline = time.monotonic() + self.timeout
        failures = {r: m for r, (status, m) in replies.items() if status != "ok"}
        for rank in range(len(self.procs)):
            if rank not in replies:
                failures[rank] = (f"no report {self.timeout:g} s after rank "
                                  f"{min(failures)} failed; killed")
        if failures:
            self.close()
            raise GroupError(failures)
        return [replies[r][1] for r in range(len(self.procs))]

    def _exit_status(self, rank: int) -> str:
        proc = self.procs[rank]
        proc.join(1.0)
        code = proc.exitcode
        if code is not None and code < 0:
            return f"the process was killed by {signal.Signals(-code).name}"
        return f"the process exited with status {code} without a report"

    def close(self) -> None:
        """Stop every rank: ask, wait up to a second, then kill (a stopped process too)."""
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
        end = time.monotonic() + 1.0
        for proc in self.procs:
            proc.join(max(end - time.monotonic(), 0))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()
        self.conns = []

    def __enter__(self) -> LocalGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()



# ----------------------------------------------------------------------------- torchrun

_DIST_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN", "product": "PRODUCT"}


def _rank_input(n: int, op: str, dtype: torch.dtype, rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rank)
    if not dtype.is_floating_point:
        return torch.randint(-3, 4, (n,), generator=gen, dtype=dtype)
    if op == "product":
        return torch.rand(n, generator=gen, dtype=dtype) + 0.5
    return torch.randn(n, generator=gen, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    """On every rank of a torchrun job: the ring against dist.all_reduce on the same inputs.
    Prints one line per rank; exits 1 if they differ by more than rounding (ints: at all)."""
    parser = argparse.ArgumentParser(prog="python -m torch_bridge.distributed",
                                     description=main.__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, default=1_000_000, help="N (default 10^6)")
    parser.add_argument("--op", choices=OPS, default="sum")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--segment", type=int, default=DEFAULT_SEGMENT)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--backend", default="nccl" if torch.cuda.is_available() else "gloo")
    args = parser.parse_args(argv)
    dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=args.timeout))
    rank, p = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dtype = getattr(torch, args.dtype)
    x = _rank_input(args.elements, args.op, dtype, rank).to(device)
    ring, ref, scale = x.clone(), x.clone(), x.abs()
    stats = ring_all_reduce(ring, args.op, segment=args.segment, timeout=args.timeout)
    dist.all_reduce(ref, getattr(dist.ReduceOp, _DIST_OPS[args.op]))
    dist.all_reduce(scale)                  # the sum of |x_r|: what a sum's rounding scales with
    if args.op == "mean":
        ref /= p
    diff = (ring.double() - ref.double()).abs()
    if dtype.is_floating_point:             # both sides round: 2p eps of the scale, each way
        eps = torch.finfo(dtype).eps
        bound = 2 * p * eps * (ref.abs() if args.op == "product" else scale).double()
        ok = bool((diff <= bound + 2 * eps * ref.double().abs()).all())
    else:
        ok = bool((diff == 0).all())
    worst = float(diff.max()) if args.elements else 0.0
    print(f"rank {rank}/{p}: ring {'==' if ok else '!='} dist.all_reduce ({args.op}, "
          f"{args.elements} {args.dtype}, max |difference| {worst:.3g}); sent "
          f"{stats.elements_sent} elements, {stats.bytes_sent} bytes "
          f"(2(p - 1)/p · N = {2 * (p - 1) / p * args.elements:.1f})", flush=True)
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
