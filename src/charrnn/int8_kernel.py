"""The sampler's int8 product at 2-8 rows (int8_rows.cpp, AVX-512 VNNI), built once per install by
`python -m charrnn.int8_kernel` (make install runs it) and loaded where it was built and the CPU
has VNNI. Without it the sampler takes oneDNN's int8 linear: the same values, slower."""

import functools
import hashlib
import subprocess
import sys
from pathlib import Path

import torch

from charrnn.files import write_atomically

SOURCE = Path(__file__).with_name("int8_rows.cpp")
FLAGS = "-std=c++20 -O3 -shared -fPIC -fopenmp -mavx512f -mavx512bw -mavx512vnni".split()


def library() -> Path:
    """Where this source's build lives: beside the install, named by the source's hash."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:12]
    return Path(sys.prefix) / "charrnn-kernels" / f"int8_rows-{digest}.so"


def supported() -> bool:
    return bool(torch.cpu.get_capabilities().get("avx512_vnni"))


def build() -> Path:
    """Compiles the kernel against this torch (OpenMP: torch's threads)."""
    from torch.utils import cpp_extension  # (0.17 s of imports: not for generate.py)

    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    paths = [f"-I{p}" for p in cpp_extension.include_paths()]
    links = [f"-L{p}" for p in cpp_extension.library_paths()] + ["-lc10", "-ltorch_cpu"]
    compile_to = lambda out: subprocess.run(  # noqa: E731
        ["g++", *FLAGS, abi, *paths, str(SOURCE), "-o", out, *links], check=True
    )
    return write_atomically(library(), compile_to)


@functools.cache
def load() -> bool:
    """Registers torch.ops.charrnn.int8_rows if it is built and this CPU runs it."""
    if not (supported() and library().exists()):
        return False
    torch.ops.load_library(library())
    return True


if __name__ == "__main__":
    if not supported():
        sys.exit("int8 kernel: not built, this CPU has no AVX-512 VNNI (oneDNN's int8 linear runs)")
    print(f"int8 kernel: {build()}")
