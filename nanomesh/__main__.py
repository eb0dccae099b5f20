import sys

from nanomesh.cli import main

sys.exit(main())
