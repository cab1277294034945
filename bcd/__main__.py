import os
import sys

from bcd.warm import run_remote

_code = run_remote(sys.argv[1:])  # a warm-start server's child runs it, when one is set (bcd.warm)
if _code is not None:
    raise SystemExit(_code)

from bcd.cli import main  # noqa: E402

if os.environ.get("BCD_RECORD_IMPORTS"):  # tests: which bcd modules a stage really loads
    import atexit

    from bcd.codedeps import record_imports

    atexit.register(record_imports, os.environ["BCD_RECORD_IMPORTS"])

raise SystemExit(main())
