from emotionlib.cli import main

raise SystemExit(main())
