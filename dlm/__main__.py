from dlm.cli import main

raise SystemExit(main())
