"""distillguard: find and stop distillation attacks on an LLM API without hurting real customers."""

import os

__version__ = "0.1.0"

# Arrow's allocator (mimalloc) hands freed pages back to the OS 10 ms after they empty; a batch
# pipeline frees and re-allocates its buffers many times a second, so the kernel faulted and
# zeroed them again (a fifth of the signals stage's samples under perf were `clear_page`). Kept
# for 10 s they are reused: seed scale, signals 95 -> 83 s, system time 49 -> 28 s. (1 s did not
# help; never purging left 9 GiB of freed pages resident into linking.) The stages give the rest
# back at their ends (``core.engine.release_arrow_memory``). Read when pyarrow loads; an explicit
# setting in the environment wins.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "10000")
