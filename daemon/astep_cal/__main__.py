"""`python -m astep_cal ...`: the `astep-cal` command."""

import sys

from astep_cal.frontends.cli import main

sys.exit(main())
