"""``python -m ferrum_kv``: the ``ferrum-kv`` command."""

import sys

from ferrum_kv.cli import main

sys.exit(main())
