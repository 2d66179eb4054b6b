import sys

from forgetlab.cli import main

sys.exit(main())
