"""``python -m sb3_iris.suite run|status|report``: see :mod:`sb3_iris.suite`."""

import sys

from sb3_iris.suite.cli import main

if __name__ == "__main__":
    sys.exit(main())
