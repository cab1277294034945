from bcd.bench.cli import main

raise SystemExit(main())
