"""The engine keeps the memory a step frees, so the next step does not fault in fresh pages."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# three "steps" that each allocate and free 38 MiB of arrays, the sizes of a large char-RNN step's
# activations and gradients; the minor page faults they cost after a first step
STEPS_PAGE_FAULTS = """
import json, resource, sys
import numpy as np
from framework.core.allocator import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():
    arrays = [np.ones(n * 1024 * 1024 // 8) for n in (13, 3, 3, 13, 6)]
    return sum(a.size for a in arrays)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def page_faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", STEPS_PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_the_next_step_reuses_the_freed_memory_without_page_faults():
    default, kept = page_faults("default"), page_faults("keep")
    assert default["faults"] >= 3000  # by default the pages go back to the kernel and are faulted in again
    assert kept["took"] is True and kept["faults"] < 100
