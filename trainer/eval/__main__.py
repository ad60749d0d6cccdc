import sys

from trainer.eval.cli import main

sys.exit(main())
