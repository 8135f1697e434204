from detjax.cli import main

raise SystemExit(main())
