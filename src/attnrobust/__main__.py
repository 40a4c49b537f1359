from attnrobust.cli import main

raise SystemExit(main())
