"""``python -m estproto.conformance URL ...``: the conformance suite's command line."""

import sys

from . import main

sys.exit(main())
