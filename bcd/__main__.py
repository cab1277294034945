import os

from bcd.cli import main

if os.environ.get("BCD_RECORD_IMPORTS"):  # tests: which bcd modules a stage really loads
    import atexit

    from bcd.codedeps import record_imports

    atexit.register(record_imports, os.environ["BCD_RECORD_IMPORTS"])

raise SystemExit(main())
