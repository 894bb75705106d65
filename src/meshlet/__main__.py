"""``python -m meshlet`` is the ``meshlet`` command."""

import sys

from meshlet.cli.main import main

sys.exit(main())
