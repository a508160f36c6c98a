"""ref_numpy.malloc.keep_freed_memory: a loop that frees and reallocates its arrays stops
page-faulting them in again (counted by getrusage in fresh interpreters)."""
import json
import subprocess
import sys

import pytest

from ref_numpy import malloc

# 40 arrays of 2 MiB alive together, then all freed, six times over: a step's activations
LOOP = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from ref_numpy.malloc import keep_freed_memory
    assert keep_freed_memory()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(1 << 18) for _ in range(40)]
    del arrays
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def _faults(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    pages = 40 * (2 << 20) // 4096                  # 20,480 pages of 4 KiB per pass
    # glibc's defaults give most pages back after every pass; the first pass faults either way
    assert min(default[2:]) > pages // 2, default
    assert max(kept[2:]) < pages // 20, kept


def test_it_says_whether_it_could_set_the_thresholds(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc.keep_freed_memory() is False
