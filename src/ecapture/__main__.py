"""`python -m ecapture` is the `ecapture` command."""

import sys

from ecapture.cli import main

sys.exit(main())
