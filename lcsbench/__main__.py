from lcsbench.cli import main

raise SystemExit(main())
