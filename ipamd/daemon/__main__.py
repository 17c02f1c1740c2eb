"""`python -m ipamd.daemon`: the same as the `ipamd` console script."""

from ipamd.daemon.main import main

raise SystemExit(main())
