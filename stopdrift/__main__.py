"""``python -m stopdrift``: the same as the ``stopdrift`` console command."""

import sys

from stopdrift.cli import main

sys.exit(main())
