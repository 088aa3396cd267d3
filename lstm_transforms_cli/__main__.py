import sys

from lstm_transforms_cli import main

sys.exit(main())
