import sys

from cvpipe.cli import main

sys.exit(main())
