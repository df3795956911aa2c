"""``python -m vireid ...``: the same command line as the ``vireid`` script."""

import sys

from vireid.cli import main

sys.exit(main())
