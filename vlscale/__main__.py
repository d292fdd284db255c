import sys

from vlscale.cli import main

sys.exit(main())
