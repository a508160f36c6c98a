"""One launcher interface over two runtimes: CUDA through CuPy, OpenCL through PyOpenCL (PoCL).

A launcher module is written once against these functions and runs on either backend:

    prog = runtime.build("opencl", "flash_attention.cu", {"HEAD_DIM": 16, ...})   # cached
    x = runtime.to_device("opencl", np.ones((4, 16)))                # copy in
    y = runtime.empty("opencl", (4, 16), np.float64)                 # allocate
    runtime.launch(prog, "kernel_name", grid=(1, 4, 1), block=(128,),
                   args=(x, y, np.int32(4), np.float64(0.5)))
    runtime.to_host(y)                                               # read back (waits)

``backend`` is ``"opencl"`` or ``"cupy"``. A grid counts blocks, as in CUDA; OpenCL's global size
is grid * block per dimension and its local size is block. Kernel sources live in
``gpu_cupy/kernels/`` or anywhere else (a user's own file, see :func:`kernel_path`) and are
written in the dialect of ``kernels/DIALECT.md``; :func:`build` prepends the runtime's prelude,
passes the defines as ``-DNAME=VALUE`` and caches the compiled program by (backend, device,
source text, defines), because a build takes about a second on PoCL. A source that does not
compile raises :class:`KernelBuildError`, whose message gives each compiler diagnostic at its
line in the kernel file (the prelude's lines taken off), e.g. ``my_kernel.cu:12: error: use of
undeclared identifier 'NUM_THREADS'``.
Scalar kernel arguments must be NumPy scalars (``np.int32``, ``np.float32``, ``np.float64``) so
that their width on the device is never guessed.

Launches are asynchronous on both runtimes: :func:`launch` returns once the kernel is queued.
:func:`to_host` waits for it; a CuPy array handed back to the caller without :func:`to_host` is
complete only once it is read or the stream is synchronised
(``cupy.cuda.get_current_stream().synchronize()``).
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

BACKENDS = ("opencl", "cupy")
KERNEL_DIR = Path(__file__).parent / "kernels"
_PRELUDES = {"opencl": "prelude_opencl.h", "cupy": "prelude_cuda.h"}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)} but got {backend!r}")


# ----------------------------------------------------------------------------- devices

@dataclass(frozen=True)
class Device:
    """What a launcher needs to know about the device it validates against."""
    backend: str
    name: str
    shared_mem_bytes: int        # static shared (OpenCL local) memory per block
    max_threads_per_block: int
    fp64: bool                   # float64 kernels can run


@functools.lru_cache(maxsize=None)
def _opencl():
    """(context, queue, device): the first OpenCL device with cl_khr_fp64, else the first one."""
    import pyopencl as cl
    devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    if not devices:
        raise RuntimeError("no OpenCL device (pip install 'pyopencl[pocl]' provides a CPU one)")
    dev = next((d for d in devices if "cl_khr_fp64" in d.extensions), devices[0])
    ctx = cl.Context([dev])
    return ctx, cl.CommandQueue(ctx), dev


@functools.lru_cache(maxsize=None)
def device(backend: str) -> Device:
    """The device this process launches on for ``backend`` (raises if there is none)."""
    _check_backend(backend)
    if backend == "opencl":
        _, _, dev = _opencl()
        return Device("opencl", dev.name.strip(), dev.local_mem_size, dev.max_work_group_size,
                      "cl_khr_fp64" in dev.extensions)
    import cupy
    attrs = cupy.cuda.Device().attributes
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return Device("cupy", props["name"].decode(), attrs["MaxSharedMemoryPerBlock"],
                  attrs["MaxThreadsPerBlock"], True)


@functools.lru_cache(maxsize=None)
def available(backend: str, dtype=None) -> tuple[bool, str]:
    """``(True, device description)`` or ``(False, reason)``; never raises for a known backend.

    cupy: CuPy imports even without a GPU, so the answer comes from a guarded device query
    (e.g. ``"no CUDA device: cudaErrorInsufficientDriver: CUDA driver version is insufficient
    ..."``). opencl: PyOpenCL imports and a device exists; with ``dtype=float64`` the device must
    also offer cl_khr_fp64.
    """
    _check_backend(backend)
    if backend == "cupy":
        try:
            import cupy
        except ImportError as exc:
            return False, f"cupy is not installed ({exc})"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError without a driver or device
            return False, f"no CUDA device: {exc}"
        if count == 0:
            return False, "no CUDA device: cudaGetDeviceCount() returned 0"
    else:
        try:
            import pyopencl  # noqa: F401
        except ImportError as exc:
            return False, f"pyopencl is not installed ({exc}); pip install 'pyopencl[pocl]'"
        try:
            _opencl()
        except Exception as exc:
            return False, f"no OpenCL device: {exc}"
    try:
        info = device(backend)
    except Exception as exc:  # e.g. an attribute query that the driver refuses
        return False, f"the {backend} device cannot be queried: {type(exc).__name__}: {exc}"
    if dtype is not None and np.dtype(dtype) == np.float64 and not info.fp64:
        return False, f"{info.name} has no float64 support (cl_khr_fp64)"
    return True, f"{info.name} ({backend})"


# ----------------------------------------------------------------------------- build errors

# One diagnostic line of a compiler log: clang's (PoCL, Oclgrind) ``input.cl:42:27: error: ...``
# or PoCL's ``error: /.../tempfile_x.cl:42:27: ...``, and NVRTC's ``k.cu(42): error: ...``.
# Source echoes and carets are indented, so a diagnostic starts in the first column.
_SEVERITY = r"(?:fatal error|catastrophic error|error|warning(?: #\S+)?|remark|note)"
_CLANG = re.compile(rf"^(?:(?P<severity>{_SEVERITY}): )?(?P<file>[^\s:]+):(?P<line>\d+):"
                    rf"(?:\d+:)? (?P<message>(?(severity)|{_SEVERITY}: ).+)$")
_NVRTC = re.compile(rf"^(?P<file>\S[^()]*)\((?P<line>\d+)\): (?P<message>{_SEVERITY}: .+)$")


class Diagnostic(NamedTuple):
    """One compiler diagnostic: the ``line`` it names in ``file`` and its ``message``."""
    line: int
    message: str          # with its severity, e.g. "error: expected ';' after expression"
    file: str             # the kernel file, or the prelude for a line that lies in it


class KernelBuildError(RuntimeError):
    """A kernel source that does not compile. ``diagnostics`` holds the compiler's (line,
    message) pairs at the lines of kernel file ``filename`` (the prelude's lines taken off; a
    line in the prelude is named there), ``log`` the compiler's whole log. Its message is one
    ``FILE:LINE: message`` line per diagnostic, then ``summary`` (what could not be compiled,
    with which options); the log itself only when it has no diagnostic to show."""

    def __init__(self, filename: str, backend: str, diagnostics: list[Diagnostic], log: str,
                 summary: str):
        self.filename, self.backend, self.diagnostics = filename, backend, diagnostics
        self.log, self.summary = log, summary
        lines = [f"{d.file}:{d.line}: {d.message}" for d in diagnostics] or [log.strip()]
        super().__init__("\n".join(lines + [summary]))

    @classmethod
    def from_log(cls, filename: str, backend: str, log: str, summary: str,
                 offset: int | None = None) -> "KernelBuildError":
        """The error for compiler ``log`` of :func:`kernel_source` (``backend``, ``filename``).
        ``offset``: lines before the file's first line (default: ``backend``'s prelude)."""
        offset = prelude_lines(backend) if offset is None else offset
        return cls(filename, backend, parse_diagnostics(log, filename, backend, offset), log,
                   summary)


def parse_diagnostics(log: str, filename: str, backend: str, offset: int) -> list[Diagnostic]:
    """The diagnostics of a clang (PoCL, Oclgrind) or NVRTC ``log``; compiled line n is line
    n - ``offset`` of ``filename``, or line n of ``backend``'s prelude when n <= ``offset``.

    >>> log = 'k.cu(45): error: expected a ";"\\n      y[i] = x[i]\\n      ^'
    >>> parse_diagnostics(log, "k.cu", "cupy", 40)
    [Diagnostic(line=5, message='error: expected a ";"', file='k.cu')]
    """
    found = []
    for raw in log.splitlines():
        m = _CLANG.match(raw) or _NVRTC.match(raw)
        if m is None:
            continue
        line = int(m.group("line"))
        message = m.group("message")
        if m.groupdict().get("severity"):
            message = f"{m.group('severity')}: {message}"
        if line > offset:
            found.append(Diagnostic(line - offset, message, filename))
        else:
            found.append(Diagnostic(line, message, _PRELUDES[backend]))
    return found


# ----------------------------------------------------------------------------- programs

@dataclass
class Program:
    """A compiled kernel source; ``kernels`` caches the kernel objects looked up by name."""
    backend: str
    handle: object                       # pyopencl.Program or cupy.RawModule
    kernels: dict = field(default_factory=dict)


_PROGRAMS: dict[tuple, Program] = {}


def prelude(backend: str) -> str:
    """The text of ``backend``'s prelude (``kernels/prelude_cuda.h`` or ``prelude_opencl.h``)."""
    _check_backend(backend)
    return (KERNEL_DIR / _PRELUDES[backend]).read_text()


def prelude_lines(backend: str) -> int:
    """Lines that :func:`kernel_source` puts before a kernel file's first line (the prelude and
    the newline after it): line n of the file is line n + prelude_lines(backend) compiled."""
    return prelude(backend).count("\n") + 1


def kernel_path(filename: str) -> Path:
    """Where kernel file ``filename`` is. A bare name (``flash_attention.cu``) is a file of
    ``kernels/`` when there is one; any other name (``my_kernel.cu`` in the working directory,
    ``./flash_attention.cu``, ``src/k.cu``, an absolute path) is a path taken as it is, relative
    to the working directory. Raises FileNotFoundError naming ``filename`` if neither exists."""
    name = os.fspath(filename)
    if not os.path.dirname(name) and (KERNEL_DIR / name).is_file():
        return KERNEL_DIR / name
    path = Path(name)
    if not path.is_file():
        where = f"{KERNEL_DIR} or " if not os.path.dirname(name) else ""
        raise FileNotFoundError(f"filename: expected a kernel file in {where}{Path.cwd()} but "
                                f"there is no file {name!r}")
    return path


def kernel_source(backend: str, filename: str) -> str:
    """The text compiled for ``backend``: its prelude, a newline, then the kernel file
    ``filename`` (see :func:`kernel_path`). Line n of the file is line n + prelude_lines
    compiled."""
    return prelude(backend) + "\n" + kernel_path(filename).read_text()


def define_options(defines: dict) -> list[str]:
    """``{"HEAD_DIM": 64, "REAL_IS_DOUBLE": 1}`` -> ``["-DHEAD_DIM=64", "-DREAL_IS_DOUBLE=1"]``."""
    return [f"-D{name}={value}" for name, value in sorted(defines.items())]


def build(backend: str, filename: str, defines: dict) -> Program:
    """Compile kernel file ``filename`` (a name in ``kernels/`` or a path, see
    :func:`kernel_path`) with ``defines`` for ``backend``'s device (cached). On OpenCL a source
    that does not compile raises :class:`KernelBuildError`."""
    source = kernel_source(backend, filename)
    options = define_options(defines)
    key = (backend, device(backend).name, source, tuple(options))
    if key not in _PROGRAMS:
        if backend == "opencl":
            import pyopencl as cl
            ctx, _, _ = _opencl()
            try:
                handle = cl.Program(ctx, source).build(options=options)
            except cl.RuntimeError as exc:
                if exc.code != cl.status_code.BUILD_PROGRAM_FAILURE:
                    raise
                raise KernelBuildError.from_log(
                    os.fspath(filename), backend, str(exc),
                    f"OpenCL ({device(backend).name}) could not compile {filename}"
                    + (f" with {' '.join(options)}" if options else "")) from None
        else:
            import cupy
            handle = cupy.RawModule(code=source, options=tuple(options), backend="nvrtc")
        _PROGRAMS[key] = Program(backend, handle)
    return _PROGRAMS[key]


# ----------------------------------------------------------------------------- arrays

def to_device(backend: str, x: np.ndarray):
    """Copy a C-contiguous NumPy array to the device (a CuPy array is passed through)."""
    _check_backend(backend)
    if backend == "opencl":
        import pyopencl.array as cla
        return cla.to_device(_opencl()[1], x)
    import cupy
    return cupy.ascontiguousarray(cupy.asarray(x))


def empty(backend: str, shape: tuple, dtype) -> object:
    """An uninitialised device array."""
    _check_backend(backend)
    if backend == "opencl":
        import pyopencl.array as cla
        return cla.empty(_opencl()[1], shape, np.dtype(dtype))
    import cupy
    return cupy.empty(shape, dtype=np.dtype(dtype))


def to_host(x) -> np.ndarray:
    """Copy a device array back to a NumPy array (waits for the kernels writing it)."""
    return x if isinstance(x, np.ndarray) else x.get()


# ----------------------------------------------------------------------------- launch

def launch(program: Program, name: str, grid: tuple, block: tuple, args: tuple) -> None:
    """Launch kernel ``name`` on ``grid`` blocks of ``block`` threads (asynchronous).

    ``args``: device arrays from this module, or NumPy scalars for int/real parameters.
    """
    if not grid or not block or len(grid) > 3 or len(block) > 3:
        raise ValueError(f"grid, block: expected 1 to 3 dimensions but got {grid}, {block}")
    threads = int(np.prod(block))
    limit = device(program.backend).max_threads_per_block
    if threads > limit:
        raise ValueError(f"block: expected at most {limit} threads per block on "
                         f"{device(program.backend).name} but got {threads} for block {block}")
    for i, a in enumerate(args):
        if isinstance(a, (bool, int, float)) and not isinstance(a, np.generic):
            raise TypeError(f"args[{i}]: expected a NumPy scalar (np.int32, np.float64, ...) "
                            f"but got Python {type(a).__name__} {a!r}")
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    if name not in program.kernels:
        if program.backend == "opencl":
            import pyopencl as cl
            program.kernels[name] = cl.Kernel(program.handle, name)
        else:
            program.kernels[name] = program.handle.get_function(name)
    kernel = program.kernels[name]
    if program.backend == "opencl":
        import pyopencl as cl
        queue = _opencl()[1]
        kernel.set_args(*[a if isinstance(a, np.generic) else a.data for a in args])
        global_size = tuple(g * b for g, b in zip(grid, block))
        cl.enqueue_nd_range_kernel(queue, kernel, global_size, block)
    else:
        kernel(grid, block, tuple(args))
