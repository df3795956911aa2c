"""``python -m vireid ...`` runs the same command-line front end as the ``vireid`` script."""

import sys

from vireid.cli import main

sys.exit(main())
