import sys

from pushi.cli import main

sys.exit(main())
