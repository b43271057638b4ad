"""``python -m iterseg.cli``: the ``iterseg`` command."""

import sys

from iterseg.cli.app import main

sys.exit(main())
