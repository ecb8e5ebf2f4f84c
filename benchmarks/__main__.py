"""
``python -m benchmarks``: run the suite.
"""

import sys

from benchmarks.run import main

if __name__ == "__main__":
    sys.exit(main())
