"""``python -m actorz``: the same as the ``actorz`` command."""

import sys

from actorz.cli import main

if __name__ == "__main__":
    sys.exit(main())
