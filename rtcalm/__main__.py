import sys

from rtcalm.cli import main

sys.exit(main())
