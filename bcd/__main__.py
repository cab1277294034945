from bcd.cli import main

raise SystemExit(main())
