"""``python -m dask_batchinfer`` runs the command line."""

import sys

from dask_batchinfer.cli.main import main

sys.exit(main())
