"""`python -m bench [--quick] [--json]`: the core benchmark (fold and end-to-end)."""

from bench.core import main

raise SystemExit(main())
