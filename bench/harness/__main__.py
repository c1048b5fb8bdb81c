"""python3 -m harness run|profile (bench/run and bench/profile set PYTHONPATH and call this)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "run":
        from .run import main
    elif command == "profile":
        from .profile import main
    else:
        sys.exit(f"usage: python3 -m harness run|profile (not {command})")
    sys.exit(main(ROOT))
