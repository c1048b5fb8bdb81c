"""The frame bench/run and bench/profile both run in: settings, installs, builds, then the work, whose text
goes to standard output. A failed check stops everything with its reason (exit 1) and keeps the temporary
directory; Ctrl-C or SIGTERM exits 130; every server started is stopped in all cases."""

import os
import signal
import subprocess
import sys
from typing import Callable, List, Optional, Tuple

from . import build, settings
from .context import Bench
from .host import BenchError
from .wrk import Wrk

# plan(settings) checks what it needs and installs what is missing, before anything is built or started,
# and returns the examples to build, whether to build bench/hmac-rate, and the work: work(bench) -> report.
Plan = Callable[[settings.Settings], Tuple[List[str], bool, Callable[[Bench], str]]]


def run(root: str, plan: Plan) -> int:
    bench: Optional[Bench] = None
    failed = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        s = settings.load()
        examples, with_hmac_rate, work = plan(s)
        deps = os.path.join(root, ".ci", "deps")  # the sidecar's build dependencies (cmake, cc, pkg-config)
        if os.access(deps, os.X_OK) and subprocess.run([deps, "build"]).returncode != 0:
            raise BenchError(".ci/deps build failed")
        bench = Bench(s, root)
        bench.built = build.binaries(s, root, examples, with_hmac_rate)
        bench.wrk = Wrk(bench)
        sys.stdout.write(work(bench))
        failed = False
        return 0
    except BenchError as e:
        print(f"\n[bench] FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if bench is not None:
            bench.cleanup(failed)
