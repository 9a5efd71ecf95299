from purgeproxy.cli import main

raise SystemExit(main())
