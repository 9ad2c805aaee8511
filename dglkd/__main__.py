import sys

from dglkd.cli import main

sys.exit(main())
