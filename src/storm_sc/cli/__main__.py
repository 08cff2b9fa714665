import sys

from storm_sc.cli import main

sys.exit(main())
